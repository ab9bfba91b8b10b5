"""Training-time distributions over t in [0, 1] (t = 0 noise, t = 1 data), restrictable to an interval.

Every sampler maps a uniform draw ``u`` to ``t`` through an inverse CDF, so a unit
trained on ``[a, b)`` samples ``t`` only inside it (seed 000, Alg. 1) and two units
that share a seed but not an interval (naive split vs CBS) consume identical random
draws: their difference is paired and only the boundaries differ.
"""
from __future__ import annotations

import math

import torch

from harness.core.errors import ConfigError
from harness.core.registry import register


def _check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    a, b = float(interval[0]), float(interval[1])
    if not (0.0 <= a < b <= 1.0):
        raise ConfigError(f"time interval [{a}, {b}) is empty or outside [0, 1]", hint="expected 0 <= start < end <= 1")
    return a, b


class TimeSampler:
    """Inverse-CDF sampler: ``t = F^{-1}(F(a) + u (F(b) - F(a)))`` is exact truncation to ``[a, b)``."""

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def icdf(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, u: torch.Tensor, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Map uniform draws ``u`` (B,) in [0, 1) to times (B,) inside ``interval``."""
        a, b = _check_interval(interval)
        lo = self.cdf(torch.tensor(a, dtype=torch.float64))
        hi = self.cdf(torch.tensor(b, dtype=torch.float64))
        t = self.icdf(lo + u.to(torch.float64) * (hi - lo))
        # Guard the half-open interval against round-off at the ends.
        t = t.clamp(min=a, max=math.nextafter(b, a))
        return t.to(u.dtype)


@register("time_sampler", "uniform")
class Uniform(TimeSampler):
    """t ~ U[0, 1] (SiT, torchcfm; seed 000's default)."""

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def icdf(self, p: torch.Tensor) -> torch.Tensor:
        return p


@register("time_sampler", "logit_normal")
class LogitNormal(TimeSampler):
    """logit(t) ~ N(mean, std) (SD3's logit-normal; t here is the data fraction)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ConfigError(f"objective.time_sampler_kwargs.std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(1e-12, 1 - 1e-12)
        z = (torch.log(t) - torch.log1p(-t) - self.mean) / self.std
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))

    def icdf(self, p: torch.Tensor) -> torch.Tensor:
        p = p.clamp(1e-12, 1 - 1e-12)
        z = math.sqrt(2) * torch.erfinv(2 * p - 1)
        return torch.sigmoid(self.mean + self.std * z)

    def __call__(self, u: torch.Tensor, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Truncated normal in logit space via scipy's ``truncnorm.ppf``, exact far in the tails.

        A plain CDF difference underflows for intervals like [0.999, 1) under JiT's
        logit-normal (mass ~1e-21); scipy works with log-probabilities there.
        """
        from scipy.stats import truncnorm

        a, b = _check_interval(interval)
        lo = -math.inf if a <= 0 else (math.log(a) - math.log1p(-a) - self.mean) / self.std
        hi = math.inf if b >= 1 else (math.log(b) - math.log1p(-b) - self.mean) / self.std
        z = torch.from_numpy(truncnorm.ppf(u.detach().cpu().double().numpy(), lo, hi))
        t = torch.sigmoid(self.mean + self.std * z).clamp(min=a, max=math.nextafter(b, a))
        return t.to(device=u.device, dtype=u.dtype)


@register("time_sampler", "jit")
class JiTLogitNormal(LogitNormal):
    """JiT's noise-level distribution: logit-normal with P_mean = -0.8, P_std = 0.8 (JiT, Li & He 2025)."""

    def __init__(self, mean: float = -0.8, std: float = 0.8) -> None:
        super().__init__(mean=mean, std=std)


@register("time_sampler", "per_batch_expert")
class PerBatchExpert:
    """Seed 000, Alg. 1 in one loop: ``i = sample_model_idx(N)`` per batch, then ``t = sample_t(b_i, b_{i+1})``.

    The first uniform draw picks the expert uniformly (u_0 * N, as Alg. 1 samples the model
    index uniformly); every t of the batch is then drawn from the ``base`` sampler truncated
    to that expert's interval (the unit's own interval is ignored: a joint unit owns [0, 1]).
    Rescaling u_0 to (u_0 N - i) reuses it for the first t, so a batch consumes the same
    draws as an independent expert's and stays paired across methods.
    """

    def __init__(self, boundaries: list[float], base: str = "uniform", base_kwargs: dict | None = None) -> None:
        from harness.core.intervals import check_boundaries
        from harness.core.registry import get

        self.boundaries = check_boundaries(boundaries, key="objective.time_sampler_kwargs.boundaries")
        if base == "per_batch_expert":
            raise ConfigError("objective.time_sampler_kwargs.base cannot be per_batch_expert")
        self.base = get("time_sampler", base)(**dict(base_kwargs or {}))
        self.edges = [0.0, *self.boundaries, 1.0]

    def expert_of_batch(self, u: torch.Tensor) -> int:
        """Index of the expert this batch trains (from its first uniform draw)."""
        n = len(self.edges) - 1
        return min(int(float(u[0]) * n), n - 1)

    def __call__(self, u: torch.Tensor, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        n = len(self.edges) - 1
        i = self.expert_of_batch(u)
        u = u.clone()
        u[0] = (u[0] * n - i).clamp(0.0, math.nextafter(1.0, 0.0))
        return self.base(u, (self.edges[i], self.edges[i + 1]))
