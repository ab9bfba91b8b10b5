"""Sample-quality metrics on features: Frechet distance, KID, precision/recall, Inception Score.

The Frechet distance is Heusel et al.'s ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) with
scipy's ``sqrtm`` (as pytorch-fid / clean-fid); ``tests/test_evaluate.py`` checks it agrees with
torch-fidelity's and clean-fid's own functions on the same features to 1e-3.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of n feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> "FeatureStats":
        f = np.asarray(feats, dtype=np.float64)
        return cls(f.mean(0), np.cov(f, rowvar=False), len(f))

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.mu, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.sigma, dtype=np.float64).tobytes())
        return h.hexdigest()

    def save_npz(self, path: Path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """FD between two Gaussians (Heusel et al. 2017), with the usual offset for singular products."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018; torch-fidelity's KID)."""
    rng = np.random.RandomState(seed)
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    d = f1.shape[1]
    vals = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def _pairwise_sq(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    bb = (b**2).sum(1)
    for i in range(0, len(a), chunk):
        x = a[i:i + chunk]
        out[i:i + chunk] = np.maximum((x**2).sum(1)[:, None] + bb[None] - 2 * x @ b.T, 0)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): k-NN balls around each manifold's points."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(f):
        d = _pairwise_sq(f, f)
        return np.sqrt(np.partition(d, k, axis=1)[:, k])  # k-th neighbour (index 0 is the point itself)

    r_real, r_fake = radii(real), radii(fake)
    d = np.sqrt(_pairwise_sq(fake, real))  # (n_fake, n_real)
    precision = float((d <= r_real[None, :]).any(1).mean())
    recall = float((d.T <= r_fake[None, :]).any(1).mean())
    return precision, recall


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over ``splits`` chunks (Salimans et al. 2016)."""
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, np.float64), axis=1)
    scores = []
    for part in np.array_split(logp, splits):
        p = np.exp(part)
        log_py = np.log(p.mean(0) + 1e-30)
        scores.append(np.exp((p * (part - log_py[None])).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def fd_from_stats(a: FeatureStats, b: FeatureStats, backend: str = "harness") -> float:
    """FD with our scipy implementation or the named library's own function (same statistics)."""
    if backend == "harness":
        return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    if backend == "torch-fidelity":
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        stats = lambda s: {"mu": s.mu, "sigma": s.sigma}  # noqa: E731
        return float(fid_statistics_to_metric(stats(a), stats(b), False)["frechet_inception_distance"])
    if backend == "clean-fid":
        from cleanfid.fid import frechet_distance as clean_fid_fd

        return float(clean_fid_fd(a.mu, a.sigma, b.mu, b.sigma))
    raise ValueError(f"unknown FD backend {backend!r}")


def fd_with_backend(f1: np.ndarray, f2: np.ndarray, backend: str = "harness") -> float:
    """FD of two feature sets with our code, torch-fidelity's or clean-fid's own function."""
    return fd_from_stats(FeatureStats.from_features(f1), FeatureStats.from_features(f2), backend)
