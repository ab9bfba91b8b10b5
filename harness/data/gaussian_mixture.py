"""An isotropic Gaussian mixture in R^D whose flow-matching velocity is known exactly.

Why: it is the harness's oracle.  Monitors (CBS path acceleration), boundaries, objective
conversions and samplers are all checked against a field that needs no training:
for the linear interpolant ``x_t = t x1 + (1 - t) x0`` with ``x0 ~ N(0, I)`` and
``x1 ~ sum_k w_k N(mu_k, s_k^2 I)``, given component k

    x_t | k ~ N(t mu_k, (t^2 s_k^2 + (1 - t)^2) I) =: N(t mu_k, var_k I)
    E[x1 | x_t, k] = mu_k + t s_k^2 / var_k (x_t - t mu_k)

and ``p(k | x_t)`` is a softmax of ``log w_k + log N(x_t; t mu_k, var_k I)``.  The exact
velocity is ``v = E[x1 - x0 | x_t] = (E[x1 | x_t] - x_t) / (1 - t)``.  Written per
component with ``r_k = x_t - t mu_k`` this equals

    v_k = mu_k - r_k ((1 - t) - t s_k^2) / var_k

(the factor 1 - t cancels analytically), which is what is evaluated: it stays finite and
exact up to and including t = 1, where v = x (since E[x0 | x1] = 0).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from harness.data.base import ArrayDataset, check_split
from harness.core.errors import ConfigError
from harness.core.registry import register

DEFAULT_OFFSET = 2.0  # default means: +-2 on the first axis
DEFAULT_STD = 0.5


class GaussianMixture:
    """``sum_k w_k N(mu_k, s_k^2 I)`` with sampling, posterior mean and exact velocity.

    All computations run in float64 and return the dtype of the input ``x``.
    """

    def __init__(self, means: torch.Tensor | Sequence[Sequence[float]], stds: torch.Tensor | Sequence[float],
                 weights: torch.Tensor | Sequence[float]) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(len(means), -1)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        k = self.means.shape[0]
        if self.stds.shape[0] != k or self.weights.shape[0] != k:
            raise ValueError(f"{k} means but {self.stds.shape[0]} stds and {self.weights.shape[0]} weights")
        if (self.stds <= 0).any():
            raise ValueError("stds must be > 0")
        if (self.weights < 0).any() or abs(float(self.weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be >= 0 and sum to 1, got {self.weights.tolist()}")

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def to_dict(self) -> dict[str, list]:
        return {"means": self.means.tolist(), "stds": self.stds.tolist(), "weights": self.weights.tolist()}

    # ------------------------------------------------------------------ data
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws: float32 points (n, D) and their component labels (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * noise
        return x.to(torch.float32), k

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the data distribution (t = 1) at ``x`` (n, D)."""
        t = torch.ones(x.shape[0], dtype=torch.float64)
        return torch.logsumexp(self._log_joint(x.to(torch.float64), t), dim=1)

    # ------------------------------------------------------------- posterior
    @staticmethod
    def _times(t: torch.Tensor | float, n: int) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if tt.numel() == 1:
            tt = tt.expand(n)
        if tt.numel() != n:
            raise ValueError(f"t has {tt.numel()} entries for {n} points")
        return tt.clamp(0.0, 1.0)

    def _stats(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r_k = x - t mu_k (n, K, D) and variances var_k (n, K)."""
        r = x[:, None, :] - t[:, None, None] * self.means[None]
        var = t[:, None] ** 2 * self.stds[None] ** 2 + (1 - t[:, None]) ** 2
        return r, var

    def _log_joint(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; t mu_k, var_k I), shape (n, K)."""
        r, var = self._stats(x, t)
        sq = (r**2).sum(-1)
        return self.weights.log()[None] - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def responsibilities(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """p(k | x_t) (n, K), by log-sum-exp."""
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        return torch.softmax(self._log_joint(x64, self._times(t, x.shape[0])), dim=1)

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """E[x1 | x_t = x] for ``x`` (n, D) and ``t`` scalar or (n,)."""
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        tt = self._times(t, x.shape[0])
        r, var = self._stats(x64, tt)
        post = torch.softmax(self._log_joint(x64, tt), dim=1)
        mean_k = self.means[None] + (tt[:, None] * self.stds[None] ** 2 / var)[..., None] * r
        return (post[..., None] * mean_k).sum(1).to(x.dtype).reshape(x.shape)

    def _component_velocity(self, r: torch.Tensor, var: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_k = mu_k - r_k ((1 - t) - t s_k^2) / var_k, (n, K, D): exact, no 1/(1 - t)."""
        coef = ((1 - t[:, None]) - t[:, None] * self.stds[None] ** 2) / var
        return self.means[None] - coef[..., None] * r

    def exact_velocity(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The marginal velocity ``(E[x1 | x_t] - x) / (1 - t)``, finite for all t in [0, 1]."""
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        tt = self._times(t, x.shape[0])
        r, var = self._stats(x64, tt)
        post = torch.softmax(self._log_joint(x64, tt), dim=1)
        v = (post[..., None] * self._component_velocity(r, var, tt)).sum(1)
        return v.to(x.dtype).reshape(x.shape)

    def exact_velocity_conditional(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """The class-conditional velocity: component ``y`` (n,) only."""
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        tt = self._times(t, x.shape[0])
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        r = x64 - tt[:, None] * self.means[y]
        var = tt**2 * self.stds[y] ** 2 + (1 - tt) ** 2
        coef = ((1 - tt) - tt * self.stds[y] ** 2) / var
        v = self.means[y] - coef[:, None] * r
        return v.to(x.dtype).reshape(x.shape)


def mixture_from_config(*, dim: int, means: list[list[float]] | None, stds: list[float] | None,
                        weights: list[float] | None) -> GaussianMixture:
    """Fill defaults (two components at +-2 on axis 0, std 0.5, uniform) and check shapes."""
    if dim < 1:
        raise ConfigError(f"data.dim must be >= 1, got {dim}")
    if means is None:
        base = [0.0] * dim
        means = [[-DEFAULT_OFFSET] + base[1:], [DEFAULT_OFFSET] + base[1:]]
    if not means or any(len(m) != dim for m in means):
        lengths = sorted({len(m) for m in means}) if means else [0]
        raise ConfigError(f"data.means: rows have length {lengths} but data.dim={dim}",
                          hint="give K rows of data.dim numbers each, or set data.dim to match")
    k = len(means)
    stds = [DEFAULT_STD] * k if stds is None else list(stds)
    weights = [1.0 / k] * k if weights is None else list(weights)
    if len(stds) != k:
        raise ConfigError(f"data.stds has {len(stds)} entries for {k} components (data.means)")
    if len(weights) != k:
        raise ConfigError(f"data.weights has {len(weights)} entries for {k} components (data.means)")
    if any(s <= 0 for s in stds):
        raise ConfigError(f"data.stds must all be > 0, got {stds}")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"data.weights must be >= 0 and sum to 1, got {weights} (sum {sum(weights)})")
    return GaussianMixture(means, stds, weights)


@register("dataset", "gaussian_mixture")
def gaussian_mixture(*, dim: int = 2, means: list[list[float]] | None = None, stds: list[float] | None = None,
                     weights: list[float] | None = None, n: int = 20000, seed: int = 0,
                     split: str = "train", conditional: bool = True) -> ArrayDataset:
    """``n`` draws from the mixture as vectors (n, D); labels = component, num_classes = K.

    ``conditional=False`` drops the labels (num_classes = 0): models then learn the
    unconditional mixture field, the one whose trajectories bifurcate between components.

    The mixture itself is attached as ``dataset.mixture`` (exact velocity, posterior).
    ``split='test'`` draws a disjoint stream from the same ``seed``.
    """
    mix = check_params(dim=dim, means=means, stds=stds, weights=weights, n=n, split=split)
    g = torch.Generator().manual_seed(2 * int(seed) + (0 if split == "train" else 1))
    x, y = mix.sample(int(n), g)
    info = {"source": "analytic isotropic Gaussian mixture", "split": split, "seed": int(seed), "n": int(n),
            **mix.to_dict(), "license": "synthetic"}
    if not conditional:
        y = torch.zeros_like(y)
    ds = ArrayDataset(x, y, num_classes=mix.num_components if conditional else 0, name="gaussian_mixture",
                      kind="vector", info=dict(info, conditional=bool(conditional)))
    ds.mixture = mix  # type: ignore[attr-defined]  # not in info: info stays JSON
    return ds


def check_params(*, dim: int = 2, means: list[list[float]] | None = None, stds: list[float] | None = None,
                 weights: list[float] | None = None, n: int = 20000, split: str = "train", **_: object) -> GaussianMixture:
    """The node's values, checked without drawing a sample (``harness validate`` calls this): the mixture."""
    check_split(split)
    if n < 1:
        raise ConfigError(f"data.n must be >= 1, got {n}")
    return mixture_from_config(dim=dim, means=means, stds=stds, weights=weights)


gaussian_mixture.check_params = check_params  # type: ignore[attr-defined]  (read by harness.config.compose)
gaussian_mixture.closed_form = True  # type: ignore[attr-defined]  (exact-field metrics: harness/evaluate/exact.py)
