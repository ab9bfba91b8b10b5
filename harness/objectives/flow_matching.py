"""Flow matching, v-prediction: the linear interpolant (seed 000, Sec. 2; SiT's "Linear" path) or seed 003's
cosine schedule (Sec. 3.3: FM and DDPM experts "under the same cosine schedule")."""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.errors import ConfigError
from harness.objectives.base import NetFn, Objective, _bcast
from harness.objectives.schedules import Schedule, make_schedule
from harness.core.registry import register


def interpolate(x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x1 + (1 - t) x0: the harness path (t = 0 noise, t = 1 data)."""
    tb = _bcast(t, x1)
    return tb * x1 + (1 - tb) * noise


PATHS = ("linear", "cosine")
CONVERSIONS = ("snr_aligned", "native")


@register("objective", "flow_matching")
class FlowMatching(Objective):
    """Regress the path velocity at x_t (conditional flow matching, Lipman et al. 2023; torchcfm's CFM).

    ``path: linear`` (default) is the harness path x_t = t x1 + (1 - t) x0 with target v = x1 - x0.
    ``path: cosine`` is seed 003 Sec. 3.3's flow matching "under the same cosine schedule" as its DDPM
    experts: x_tau = alpha(tau) x1 + sigma(tau) eps with the DDPM cosine schedule (alpha = cos(pi tau / 2),
    sigma = sin(pi tau / 2), tau = 1 - t; SiT's variance-preserving "GVP" path), target dx/dt =
    -(alpha' x1 + sigma' eps); the network sees harness t, like every flow-matching expert (so Eq. 21's
    time map applies unchanged).  How a cosine-path network answers as a field (``conversion``, a
    sampling-time key, not hashed into the unit):

    * ``snr_aligned`` (default): the exact harness (linear-path) velocity, by moving x to the cosine
      path at equal signal-to-noise ratio, reading (x1_hat, eps_hat) off the network's velocity there and
      returning x1_hat - eps_hat, as :func:`~harness.objectives.conversions.snr_aligned_velocity` does for
      an eps-network.  Every harness metric (held-out FM loss, velocity error) assumes this convention.
    * ``native``: the network's velocity as is, which follows the cosine marginals: what the seed samples,
      and the same path as a DDPM expert under ``conversion: seed003``, so a threshold switch between the
      two (Tab. 3 "Combined (same schedule)", Fig. 4) hands over between fields of one path.  A native
      cosine field is not a linear-path velocity: compare it by samples (FD), not by velocity metrics.
    """

    UNHASHED_KEYS = ("conversion",)
    HASHED_UNLESS_DEFAULT = {"path": "linear"}     # the linear path trained before the key existed

    def __init__(self, path: str = "linear", conversion: str = "snr_aligned", time_sampler: str = "uniform",
                 time_sampler_kwargs=None) -> None:
        super().__init__(time_sampler, time_sampler_kwargs)
        if path not in PATHS:
            raise ConfigError(f"objective.path: {path!r} is not one of {', '.join(PATHS)}",
                              hint="linear = the harness path (seed 000, SiT Linear); cosine = seed 003's DDPM cosine schedule")
        if conversion not in CONVERSIONS:
            raise ConfigError(f"objective.conversion: {conversion!r} is not one of {', '.join(CONVERSIONS)}",
                              hint="snr_aligned = exact linear-path velocity; native = the cosine path's own velocity")
        if path == "linear" and conversion != "snr_aligned":
            raise ConfigError("objective.conversion=native needs objective.path=cosine (the linear path's velocity is native already)",
                              hint="drop objective.conversion, or set objective.path=cosine")
        self.path, self.conversion = path, conversion
        self.schedule = None if path == "linear" else make_schedule(path)

    def _cosine_target(self, x1, noise, t):
        tau = 1 - t
        alpha, sigma = self.schedule.alpha_sigma(tau)
        d_alpha, d_sigma = self.schedule.derivatives(tau)
        x_tau = _bcast(alpha, x1) * x1 + _bcast(sigma, x1) * noise
        return x_tau, -(_bcast(d_alpha, x1) * x1 + _bcast(d_sigma, x1) * noise)     # dt = -d tau

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if self.schedule is None:
            xt, target = interpolate(x1, noise, t), x1 - noise
        else:
            xt, target = self._cosine_target(x1, noise, t)
        return (net(xt, t, y) - target).flatten(1).pow(2).mean(1)

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if self.schedule is None or self.conversion == "native":
            return net(x, t, y)
        return path_aligned_velocity(lambda xp, tp: net(xp, tp, y), x, t, self.schedule)


def path_aligned_velocity(v_fn, x: torch.Tensor, t: torch.Tensor, schedule: Schedule, *, t_min: float = 1e-4) -> torch.Tensor:
    """Exact linear-path velocity from a velocity-network of a variance-preserving path ``schedule``.

    At the tau of equal signal-to-noise ratio, x_tau = x sigma_tau / (1 - t) has the same (x1, eps)
    decomposition as the linear-path point x; the network's v = -(alpha' x1 + sigma' eps) and
    x_tau = alpha x1 + sigma eps are two linear equations in (x1, eps), solved in closed form.
    """
    t = t.clamp(t_min, 1 - t_min)
    tau = schedule.tau_from_snr_ratio(t / (1 - t))
    alpha, sigma = schedule.alpha_sigma(tau)
    d_alpha, d_sigma = schedule.derivatives(tau)
    x_tau = x * _bcast(sigma / (1 - t), x)
    v = v_fn(x_tau, 1 - tau)
    # [alpha sigma; -alpha' -sigma'] [x1; eps] = [x_tau; v]
    det = _bcast(sigma * d_alpha - alpha * d_sigma, x)
    x1 = (-_bcast(d_sigma, x) * x_tau - _bcast(sigma, x) * v) / det
    eps = (_bcast(alpha, x) * v + _bcast(d_alpha, x) * x_tau) / det
    return x1 - eps
