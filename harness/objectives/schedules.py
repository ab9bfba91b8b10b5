"""Noise schedules x_tau = alpha(tau) x_data + sigma(tau) eps in DDPM time tau (tau = 0 data, tau = 1 noise).

The harness time is t = 1 - tau (t = 0 noise).  Schedules give alpha, sigma and their
tau-derivatives in closed form, which the epsilon -> velocity conversion of seed 003
(Eq. 7 / Eq. 24) needs, and (:meth:`Schedule.discrete`) the T-step process a DDPM ancestral
sampler walks: cumulative alphas per step and the network time of each step.
"""
from __future__ import annotations

import math

import torch

from harness.core.errors import ConfigError


class Schedule:
    name = "base"

    def spec(self) -> tuple:
        """What identifies the schedule (two objectives with equal specs share one DDPM path)."""
        return (self.name, *sorted((k, v) for k, v in vars(self).items() if isinstance(v, (int, float, str))))

    def discrete(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alphas_cumprod (T,), net tau (T,)) of a T-step discretisation, float64.

        Step i (0-based) ends at tau_{i+1} = (i + 1) / T: the network trained on continuous tau is asked there,
        and beta_i = min(1 - abar(tau_{i+1}) / abar(tau_i), 0.999), ADM's ``betas_for_alpha_bar`` (its cap keeps
        a schedule reaching alpha = 0 at tau = 1, as our cosine, away from the singular last step).
        """
        taus = torch.arange(T + 1, dtype=torch.float64) / T
        abar = self.alpha_sigma(taus)[0].double() ** 2
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        return torch.cumprod(1 - betas, 0), taus[1:]

    def alpha_sigma(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def derivatives(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha / d tau, d sigma / d tau)."""
        raise NotImplementedError

    def tau_from_snr_ratio(self, r: torch.Tensor) -> torch.Tensor:
        """The tau at which alpha/sigma = r (r >= 0), used to align with the linear path."""
        raise NotImplementedError


class Cosine(Schedule):
    """alpha = cos(pi tau / 2), sigma = sin(pi tau / 2) (seed 003, Eq. 26-27)."""

    name = "cosine"

    def alpha_sigma(self, tau):
        return torch.cos(math.pi * tau / 2), torch.sin(math.pi * tau / 2)

    def derivatives(self, tau):
        return -math.pi / 2 * torch.sin(math.pi * tau / 2), math.pi / 2 * torch.cos(math.pi * tau / 2)

    def tau_from_snr_ratio(self, r):
        return 2 / math.pi * torch.atan2(torch.ones_like(r), r)


class LinearBeta(Schedule):
    """DDPM's linear beta schedule (1e-4 .. 0.02 over 1000 steps) in its continuous VP limit.

    beta(tau) = b0 + tau (b1 - b0) with b0 = 0.1, b1 = 20 (Song et al. 2021, the
    continuous limit of Ho et al.'s 1000-step schedule); alpha^2 = exp(-int beta).
    """

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.b0, self.b1 = beta_min, beta_max

    def _log_alpha2(self, tau):
        return -(self.b0 * tau + 0.5 * (self.b1 - self.b0) * tau**2)

    def alpha_sigma(self, tau):
        a2 = torch.exp(self._log_alpha2(tau))
        return a2.sqrt(), (1 - a2).clamp_min(0).sqrt()

    def derivatives(self, tau):
        alpha, sigma = self.alpha_sigma(tau)
        beta = self.b0 + tau * (self.b1 - self.b0)
        d_alpha = -0.5 * beta * alpha
        d_sigma = 0.5 * beta * alpha**2 / sigma.clamp_min(1e-12)
        return d_alpha, d_sigma

    def tau_from_snr_ratio(self, r):
        # alpha^2 = r^2 / (1 + r^2)  =>  solve b0 tau + (b1-b0)/2 tau^2 = -log(alpha^2)
        c = torch.log1p(1 / r.clamp_min(1e-12) ** 2)
        a = 0.5 * (self.b1 - self.b0)
        return ((-self.b0 + torch.sqrt(self.b0**2 + 4 * a * c)) / (2 * a)).clamp(0, 1)


class DiscreteLinearBeta(Schedule):
    """DDPM's 1000-step linear beta table itself, as DiT trained on it (``get_named_beta_schedule("linear", 1000)``).

    beta_k = linspace(1e-4, 0.02, 1000)[k], abar_k = prod_{j <= k} (1 - beta_j) (Ho et al. 2020; ADM and DiT
    ``gaussian_diffusion.py``).  DiT's network sees the step index k; with the backbone's ``time_scale: 1000``
    that is tau = k / 1000, so step k sits at tau_k = k / 1000 (not the (k + 1) / T of :meth:`Schedule.discrete`).
    Between table points log abar is linear in tau (so the velocity conversions and training see a continuous
    path through the table); outside [0, 0.999] it is held at the end values.  The continuous VP limit
    :class:`LinearBeta` differs from this table by up to 7 % in abar at the noisy end.
    """

    name = "linear_1000"
    T = 1000

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.beta_start, self.beta_end = beta_start, beta_end
        betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        self._log_abar = torch.cumsum(torch.log1p(-betas), 0)          # (T,), decreasing

    def _k(self, tau: torch.Tensor) -> torch.Tensor:
        return (tau.double() * self.T).clamp(0, self.T - 1)

    def _log_abar_at(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log abar(tau), d log abar / d tau) by linear interpolation of the table in k = 1000 tau."""
        k = self._k(tau)
        lo = k.floor().long().clamp(max=self.T - 2)
        table = self._log_abar.to(k.device)
        slope = table[lo + 1] - table[lo]
        inside = (tau.double() * self.T >= 0) & (tau.double() * self.T <= self.T - 1)
        return table[lo] + (k - lo) * slope, torch.where(inside, slope * self.T, torch.zeros_like(slope))

    def alpha_sigma(self, tau):
        log_abar = self._log_abar_at(tau)[0]
        return torch.exp(0.5 * log_abar).to(tau.dtype), (-torch.expm1(log_abar)).sqrt().to(tau.dtype)

    def derivatives(self, tau):
        log_abar, d = self._log_abar_at(tau)
        abar = torch.exp(log_abar)
        d_alpha = 0.5 * abar.sqrt() * d
        d_sigma = -0.5 * abar * d / (1 - abar).sqrt()
        return d_alpha.to(tau.dtype), d_sigma.to(tau.dtype)

    def tau_from_snr_ratio(self, r):
        # abar = r^2 / (1 + r^2); invert the decreasing piecewise-linear log abar(k)
        target = (2 * torch.log(r.double().clamp_min(1e-30)) - torch.log1p(r.double() ** 2)).clamp(
            float(self._log_abar[-1]), float(self._log_abar[0]))
        neg = (-self._log_abar).to(target.device)                       # increasing
        hi = torch.searchsorted(neg, -target).clamp(1, self.T - 1)
        lo = hi - 1
        k = lo + (-target - neg[lo]) / (neg[hi] - neg[lo])
        return (k / self.T).to(r.dtype)

    def discrete(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if T != self.T:
            raise ConfigError(f"sampler.diffusion_steps={T}: schedule linear_1000 is DDPM's {self.T}-step table",
                              hint=f"set sampler.diffusion_steps={self.T}")
        return torch.exp(self._log_abar), torch.arange(self.T, dtype=torch.float64) / self.T


class LinearPath(Schedule):
    """alpha = 1 - tau, sigma = tau: the flow-matching path itself (seed 003, Eq. 25)."""

    name = "linear_path"

    def alpha_sigma(self, tau):
        return 1 - tau, tau

    def derivatives(self, tau):
        return -torch.ones_like(tau), torch.ones_like(tau)

    def tau_from_snr_ratio(self, r):
        return 1 / (1 + r)


SCHEDULES = {"cosine": Cosine, "linear": LinearBeta, "linear_1000": DiscreteLinearBeta, "linear_path": LinearPath}


def make_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ConfigError(
            f"objective.schedule: unknown DDPM schedule {name!r}",
            hint=f"expected one of {', '.join(SCHEDULES)} (a checkpoint with another schedule cannot be converted)",
        )
    return SCHEDULES[name]()
