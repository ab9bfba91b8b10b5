"""Sample-quality metrics on features: Frechet distance, KID, precision/recall, Inception Score.

The Frechet distance is Heusel et al.'s ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) with
scipy's ``sqrtm`` (as pytorch-fid / clean-fid); ``tests/test_evaluate.py`` checks it agrees with
torch-fidelity's and clean-fid's own functions on the same features to 1e-3.

Everything here is sized for 50K samples of 2048-d features: statistics can be accumulated batch
by batch (:class:`StreamingStats`), KID works on 1000-point subsets, and precision/recall walks
the n x n distance matrix in blocks that are never held whole.  KID and precision/recall run in
torch on ``device`` (default: where the features already are, else CPU).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from harness.core.errors import DataError

ArrayLike = Union[np.ndarray, torch.Tensor]
DeviceLike = Union[str, torch.device]


def n_label(n: int) -> str:
    """The sample count in a metric's name: 256, 2k, 50k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


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


class StreamingStats:
    """Mean and covariance accumulated batch by batch: 50K x 2048 features are never held at once.

    Keeps n, the float64 sum and the float64 sum of outer products of ``x - c``, where the shift
    ``c`` is the first batch's mean: the covariance (S - n m m^T) / (n - 1) then subtracts two
    numbers of the size of the spread, not of the mean, so it does not cancel catastrophically.
    ``finalize()`` equals :meth:`FeatureStats.from_features` of the concatenated batches (np.cov,
    ddof 1) to float64 rounding.  ``merge`` adds another accumulator (e.g. another rank's shard).
    """

    def __init__(self, device: DeviceLike = "cpu") -> None:
        self.device = torch.device(device)
        self.n = 0
        self._shift: Optional[torch.Tensor] = None   # (D,)
        self._sum: Optional[torch.Tensor] = None     # (D,)   sum of (x - shift)
        self._outer: Optional[torch.Tensor] = None   # (D, D) sum of (x - shift)(x - shift)^T

    def update(self, batch: ArrayLike) -> "StreamingStats":
        """Add a (B, D) batch of features (NumPy or torch, any device)."""
        x = _tensor(batch, self.device, torch.float64)
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(len(self._shift), len(self._shift), dtype=torch.float64, device=self.device)
        x = x - self._shift
        self._sum += x.sum(0)
        self._outer.addmm_(x.T, x)
        self.n += len(x)
        return self

    def merge(self, other: "StreamingStats") -> "StreamingStats":
        """Add ``other``'s batches, re-centring its sums on this accumulator's shift (d = c_other - c_self)."""
        if other._shift is None:
            return self
        if self._shift is None:
            state = (other._shift, other._sum, other._outer)
            self._shift, self._sum, self._outer = (t.to(self.device).clone() for t in state)
            self.n = other.n
            return self
        d = other._shift.to(self.device) - self._shift
        s, o = other._sum.to(self.device), other._outer.to(self.device)
        self._outer += o + torch.outer(s, d) + torch.outer(d, s) + other.n * torch.outer(d, d)
        self._sum += s + other.n * d
        self.n += other.n
        return self

    def finalize(self) -> FeatureStats:
        """The :class:`FeatureStats` of everything added so far."""
        if self.n < 2:
            raise DataError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        m = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return FeatureStats((self._shift + m).cpu().numpy(), sigma.cpu().numpy(), self.n)


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


def _device(device: Optional[DeviceLike], *inputs: Any) -> torch.device:
    """The explicit ``device``, else that of the first input tensor (CUDA features stay on the GPU), else CPU."""
    if device is not None:
        return torch.device(device)
    return next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))


def _tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    """``x`` as a (N, D) tensor on ``device``; shares the caller's memory unless ``copy`` or a dtype/device change."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=dtype, copy=copy).reshape(len(t), -1)


def kernel_inception_distance(f1: ArrayLike, f2: ArrayLike, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, *, device: Optional[DeviceLike] = None) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018; torch-fidelity's KID).

    k(x, y) = (x.y / d + 1)^3 on ``num_subsets`` pairs of ``subset_size``-point subsets drawn by a
    NumPy RandomState(seed) in torch-fidelity's order, so the subsets (and the numbers, to float64
    rounding) are torch-fidelity's; the kernels are float64 torch on ``device``, (m, m) at a time.
    """
    rng = np.random.RandomState(seed)
    dev = _device(device, f1, f2)
    x_all, y_all = _tensor(f1, dev, torch.float64), _tensor(f2, dev, torch.float64)
    m = min(subset_size, len(x_all), len(y_all))
    d = x_all.shape[1]
    vals = []
    for _ in range(num_subsets):
        x = x_all[torch.from_numpy(rng.choice(len(x_all), m, replace=False)).to(dev)]
        y = y_all[torch.from_numpy(rng.choice(len(y_all), m, replace=False)).to(dev)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
                    - 2 * kxy.mean())
    v = torch.stack(vals).cpu().numpy()
    return float(np.mean(v)), float(np.std(v))


def _sq_dists(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared distances ||a||^2 + ||b||^2 - 2 a.b, clamped at 0 against rounding; one block allocated."""
    return torch.addmm(a_sq[:, None], a, b.T, alpha=-2).add_(b_sq[None]).clamp_min_(0)


def _knn_sq_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """(N,) squared distance from each row of x to its k-th nearest other row (the row itself is neighbour 0).

    For each block of rows, scans x block by block keeping the running k + 1 smallest distances
    (topk of the running best concatenated with the new block), so memory is O(batch^2), not O(N^2).
    """
    sq = (x * x).sum(1)
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), batch):
        a, best = x[i:i + batch], x.new_empty(min(batch, len(x) - i), 0)
        for j in range(0, len(x), batch):
            cand = torch.cat([best, _sq_dists(a, sq[i:i + batch], x[j:j + batch], sq[j:j + batch])], 1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False, sorted=True).values
        out[i:i + batch] = best[:, k]
    return out


def _coverage(fake: torch.Tensor, real: torch.Tensor, r2_fake: torch.Tensor, r2_real: torch.Tensor,
              batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((N_fake,) fake point inside some real k-NN ball, (N_real,) real point inside some fake ball).

    One pass over the fake x real distance blocks answers both questions (the cross distances are
    shared), with no early exit.
    """
    fsq, rsq = (fake * fake).sum(1), (real * real).sum(1)
    fake_in = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    real_in = torch.zeros(len(real), dtype=torch.bool, device=fake.device)
    for i in range(0, len(fake), batch):
        for j in range(0, len(real), batch):
            d = _sq_dists(fake[i:i + batch], fsq[i:i + batch], real[j:j + batch], rsq[j:j + batch])
            fake_in[i:i + batch] |= (d <= r2_real[None, j:j + batch]).any(1)
            real_in[j:j + batch] |= (d <= r2_fake[i:i + batch, None]).any(0)
    return fake_in, real_in


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3, *, device: Optional[DeviceLike] = None,
                     batch: int = 4096) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019, Sec. 2): k-NN balls around each manifold's points.

    Precision is the fraction of fake points inside the ball of some real point (radius: distance to
    its k-th nearest real neighbour), recall the fraction of real points inside some fake ball.
    Distances are float32 on ``device``, in (batch x batch) blocks (64 MB at 4096), both sets shifted
    by the real mean first so ||a||^2 + ||b||^2 - 2 a.b does not cancel on features with a large
    common offset (Inception's are non-negative); memory beyond two float32 copies of the features
    is O(batch^2).  Results equal the dense float64 computation unless a distance lies within float32
    rounding of a radius (``tests/test_metrics_scale.py`` checks equal counts against it); on CUDA the
    distance matmuls run in full float32 (TF32, which sampling turns on, is switched off for them).
    """
    dev = _device(device, real, fake)
    r, f = _tensor(real, dev, torch.float32, copy=True), _tensor(fake, dev, torch.float32, copy=True)
    for name, x in (("real", r), ("fake", f)):
        if len(x) <= k:
            raise DataError(f"precision/recall with k={k} needs more than {k} {name} feature vectors, got {len(x)}",
                            hint="score more samples or drop pr from eval.metrics")
    centre = r.mean(0)  # any shift leaves distances unchanged; one near the mean keeps them accurate
    r -= centre
    f -= centre
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # TF32's 10-bit mantissa would move points across radii
    try:
        fake_in, real_in = _coverage(f, r, _knn_sq_radii(f, k, batch), _knn_sq_radii(r, k, batch), batch)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return float(fake_in.double().mean()), float(real_in.double().mean())


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
