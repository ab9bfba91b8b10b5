"""DDPM epsilon-prediction (Ho et al. 2020; seed 003, Eq. 3) with its conversion to velocity."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.core.errors import ConfigError
from harness.objectives.base import NetFn, Objective, _bcast
from harness.objectives.conversions import DAMPINGS, seed003_velocity, snr_aligned_velocity
from harness.objectives.schedules import make_schedule
from harness.core.registry import register


@register("objective", "ddpm")
class DDPMEpsilon(Objective):
    """Regress eps at x_tau = alpha x1 + sigma eps, tau = 1 - t; the network sees tau as its time.

    ``conversion`` picks how the expert answers as a velocity field: ``snr_aligned``
    (exact on the harness's linear path; default) or ``seed003`` (the seed's recipe
    with clamp, alpha_safe and damping, on the DDPM's own path).
    """

    # keys that only change how a trained eps-network answers as a velocity, not its weights
    SAMPLING_ONLY_KEYS = ("conversion", "clamp", "alpha_min", "damping")

    def __init__(self, schedule: str = "cosine", conversion: str = "snr_aligned", clamp: Optional[float] = 20.0,
                 alpha_min: float = 0.01, damping: str = "literal", time_sampler: str = "uniform",
                 time_sampler_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(time_sampler, time_sampler_kwargs)
        if conversion not in ("snr_aligned", "seed003"):
            raise ConfigError(f"objective.conversion: {conversion!r} is not one of snr_aligned, seed003")
        if damping not in DAMPINGS:
            raise ConfigError(f"objective.damping: {damping!r} is not one of {', '.join(DAMPINGS)}",
                              hint="literal = seed 003 Sec. 6.2 as printed (identity on [0, 1]); eq31 = Sec. 8.3.4")
        self.schedule = make_schedule(schedule)
        self.conversion, self.clamp, self.alpha_min, self.damping = conversion, clamp, alpha_min, damping

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        tau = 1 - t
        alpha, sigma = self.schedule.alpha_sigma(tau)
        x_tau = _bcast(alpha, x1) * x1 + _bcast(sigma, x1) * noise
        return (net(x_tau, tau, y) - noise).flatten(1).pow(2).mean(1)

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if self.conversion == "seed003":
            tau = 1 - t
            return seed003_velocity(net(x, tau, y), x, tau, self.schedule, alpha_min=self.alpha_min, clamp=self.clamp,
                                    damping_mode=self.damping)
        return snr_aligned_velocity(lambda xt, tau: net(xt, tau, y), x, t, self.schedule, clamp=self.clamp)
