"""DDPM epsilon-prediction (Ho et al. 2020; seed 003, Eq. 3) with its conversion to velocity."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.core.errors import ConfigError
from harness.objectives.base import NetFn, Objective, Parameterisation, Prediction, _bcast, split_variance
from harness.objectives.conversions import DAMPINGS, seed003_velocity, snr_aligned_velocity
from harness.objectives.schedules import make_schedule
from harness.core.registry import register


@register("objective", "ddpm")
class DDPMEpsilon(Objective):
    """Regress eps at x_tau = alpha x1 + sigma eps, tau = 1 - t; the network sees tau as its time.

    ``conversion`` picks how the expert answers as a velocity field: ``snr_aligned``
    (exact on the harness's linear path; default) or ``seed003`` (the seed's recipe
    with clamp, alpha_safe and damping, on the DDPM's own path).

    Natively (:meth:`predict`, for the DDPM ancestral sampler ``harness.sample.ddpm``) it answers the raw
    eps at its own time tau = 1 - t on its own path, and a ``learn_sigma`` network's variance channels beside
    it.  Those channels are read, never trained here: the loss is the eps MSE of the first C channels (DiT's
    ``L_simple``; its ``L_vlb`` term, which trains them, is not implemented), so learned variances come from
    imported DiT weights (``backbone.init_from``).
    """

    # keys that only change how a trained eps-network answers as a velocity, not its weights: out of the unit hash,
    # so one trained DDPM expert serves every conversion (seed 003 Sec. 6.2 vs snr_aligned) without retraining
    UNHASHED_KEYS = ("conversion", "clamp", "alpha_min", "damping")

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
        # seed 003 Eq. 31 damps "for cosine schedules" only: another schedule's converted velocity is left undamped
        self.damps = str(schedule).startswith("cosine")
        self.conversion, self.clamp, self.alpha_min, self.damping = conversion, clamp, alpha_min, damping
        self.parameterisation = Parameterisation("eps", self.schedule)

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        tau = 1 - t
        alpha, sigma = self.schedule.alpha_sigma(tau)
        x_tau = _bcast(alpha, x1) * x1 + _bcast(sigma, x1) * noise
        return (self.eps(net, x_tau, tau, y) - noise).flatten(1).pow(2).mean(1)

    @staticmethod
    def eps(net: NetFn, x_tau: torch.Tensor, tau: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """The eps channels of the network's output (a ``learn_sigma`` network's variance half dropped)."""
        return split_variance(net(x_tau, tau, y), x_tau)[0]

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if self.conversion == "seed003":
            tau = 1 - t
            return seed003_velocity(self.eps(net, x, tau, y), x, tau, self.schedule, alpha_min=self.alpha_min,
                                    clamp=self.clamp, damp=self.damps, damping_mode=self.damping)
        return snr_aligned_velocity(lambda xt, tau: self.eps(net, xt, tau, y), x, t, self.schedule, clamp=self.clamp)

    def predict(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> Prediction:
        """Raw eps (and variance channels) at x on this objective's DDPM path at tau = 1 - t."""
        eps, variance = split_variance(net(x, 1 - t, y), x)
        return Prediction("eps", eps, variance)
