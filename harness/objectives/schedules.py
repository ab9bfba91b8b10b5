"""Noise schedules x_tau = alpha(tau) x_data + sigma(tau) eps in DDPM time tau (tau = 0 data, tau = 1 noise).

The harness time is t = 1 - tau (t = 0 noise).  Schedules give alpha, sigma and their
tau-derivatives in closed form, which the epsilon -> velocity conversion of seed 003
(Eq. 7 / Eq. 24) needs.
"""
from __future__ import annotations

import math

import torch

from harness.core.errors import ConfigError


class Schedule:
    name = "base"

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


class LinearPath(Schedule):
    """alpha = 1 - tau, sigma = tau: the flow-matching path itself (seed 003, Eq. 25)."""

    name = "linear_path"

    def alpha_sigma(self, tau):
        return 1 - tau, tau

    def derivatives(self, tau):
        return -torch.ones_like(tau), torch.ones_like(tau)

    def tau_from_snr_ratio(self, r):
        return 1 / (1 + r)


SCHEDULES = {"cosine": Cosine, "linear": LinearBeta, "linear_path": LinearPath}


def make_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ConfigError(
            f"objective.schedule: unknown DDPM schedule {name!r}",
            hint=f"expected one of {', '.join(SCHEDULES)} (a checkpoint with another schedule cannot be converted)",
        )
    return SCHEDULES[name]()
