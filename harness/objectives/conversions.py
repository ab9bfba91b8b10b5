"""Exact conversions between epsilon-, x- and velocity-prediction (seed 003, Sec. 2.3 and Sec. 8).

Two ways to turn a DDPM epsilon-expert into a harness velocity:

* :func:`seed003_velocity` is the seed's recipe literally: x0_hat (Eq. 5/23) with
  alpha_safe = max(alpha, 0.01) and clamp to [-20, 20], v = alpha' x0_hat + sigma' eps
  (Eq. 7/24), damped by s(tau) = min(1, 15 / (1 + exp(10 (tau - 0.85)))) for tau > 0.85
  (Sec. 8 "Numerical Stability").  It follows the DDPM's own marginals.
* :func:`snr_aligned_velocity` first moves x from the linear path onto the DDPM path at
  the tau of equal signal-to-noise ratio, so the result is exactly the linear-path
  velocity; it mixes with flow-matching experts without the seed's safeguards.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from harness.core.registry import register
from harness.objectives.base import _bcast
from harness.objectives.schedules import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_tau, tau) -> eps_hat


def ddpm_timestep(t: torch.Tensor) -> torch.Tensor:
    """t_DiT = round(999 t) for t in [0, 1] (seed 003, Eq. 21); t in the seed's convention (1 = noise)."""
    return torch.round(999 * t.clamp(0, 1)).long()


@register("time_map", "eq21")
def fm_step_index(t: torch.Tensor) -> torch.Tensor:
    """Eq. 21 for a flow-matching expert fed harness t: t_DiT = round(999 (1 - t)), a float step index.

    Direction: the harness's t runs 0 = noise -> 1 = data (:func:`harness.objectives.flow_matching.interpolate`);
    the seed's FM t, and a DDPM DiT's step index (999 = pure noise), run the other way, so the seed's
    round(999 t_seed) is round(999 (1 - t)) here.  A backbone with ``time_map: eq21`` embeds this index
    unscaled, as DiT embeds its integer steps, so an expert initialised from a DDPM DiT (seed 003 Sec. 2.6,
    ``backbone.init_transfer``) reads the pretrained timestep-embedding MLP at the step of equal seed time.
    DDPM experts need no map (Eq. 21's second case): they already feed tau = 1 - t, embedded as 1000 tau.
    """
    return ddpm_timestep(1 - t).to(t.dtype if t.is_floating_point() else torch.float32)


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                alpha_min: Optional[float] = None, clamp: Optional[float] = None) -> torch.Tensor:
    """x0_hat = (x - sigma eps) / alpha (seed 003, Eq. 5), with alpha_safe and clamp when asked."""
    a = alpha if alpha_min is None else alpha.clamp_min(alpha_min)
    x0 = (x - _bcast(sigma, x) * eps) / _bcast(a, x)
    return x0 if clamp is None else x0.clamp(-clamp, clamp)


def damping(tau: torch.Tensor, start: float = 0.85) -> torch.Tensor:
    """s(t) = min(1, 15 / (1 + exp(10 (t - 0.85)))) for t > 0.85, else 1 (seed 003, Sec. 8).

    As printed, s(t) < 1 only for t > 0.85 + ln(14)/10 = 1.114, so on t in [0, 1] it is the
    identity; implemented literally, and the observation is tested.
    """
    s = torch.clamp(15.0 / (1 + torch.exp(10 * (tau - 0.85))), max=1.0)
    return torch.where(tau > start, s, torch.ones_like(tau))


def damping_eq31(tau: torch.Tensor) -> torch.Tensor:
    """s(t) = 0.88 for t > 0.85, 0.93 for 0.6 < t <= 0.85, 0.96 for t <= 0.6 (seed 003, Sec. 8.3.4, Eq. 31).

    The seed states this damping twice: Sec. 6.2 as the sigmoid :func:`damping` "for t > 0.85",
    which as printed never drops below 1 on [0, 1], and Sec. 8.3.4 as these explicit constants,
    whose top branch is the same "t > 0.85".  We read Eq. 31 as what was run (it is the only
    form that damps at all) and keep the literal sigmoid selectable (``damping: literal``).
    """
    return torch.where(tau > 0.85, 0.88, torch.where(tau > 0.6, 0.93, 0.96)).to(tau.dtype)


DAMPINGS = {"literal": damping, "eq31": damping_eq31, "none": torch.ones_like}


def seed003_velocity(eps: torch.Tensor, x: torch.Tensor, tau: torch.Tensor, schedule: Schedule, *,
                     alpha_min: float = 0.01, clamp: Optional[float] = 20.0, damp: bool = True,
                     damping_mode: str = "literal") -> torch.Tensor:
    """Harness velocity dx/dt (t = 1 - tau) of an epsilon-prediction, the seed's way (Eq. 24 + Sec. 8).

    ``damping_mode`` picks s(t): ``literal`` (Sec. 6.2 as printed), ``eq31`` (Sec. 8.3.4) or ``none``.
    """
    alpha, sigma = schedule.alpha_sigma(tau)
    d_alpha, d_sigma = schedule.derivatives(tau)
    x0 = x0_from_eps(x, eps, alpha, sigma, alpha_min=alpha_min, clamp=clamp)
    v_tau = _bcast(d_alpha, x) * x0 + _bcast(d_sigma, x) * eps  # data -> noise velocity
    if damp:
        v_tau = v_tau * _bcast(DAMPINGS[damping_mode](tau), x)
    return -v_tau  # dt = -d tau


def snr_aligned_velocity(eps_fn: EpsFn, x: torch.Tensor, t: torch.Tensor, schedule: Schedule, *,
                         t_min: float = 1e-4, clamp: Optional[float] = None) -> torch.Tensor:
    """Exact linear-path velocity from an epsilon-model of any schedule.

    On the linear path x = t x1 + (1 - t) eps the ratio signal/noise is t / (1 - t); at the
    DDPM time tau with alpha/sigma equal to it, x_tau = x * sigma_tau / (1 - t) has the same
    (x1, eps) decomposition, so eps_hat is shared and v = x1_hat - eps_hat exactly.
    """
    t = t.clamp(t_min, 1 - t_min)
    tau = schedule.tau_from_snr_ratio(t / (1 - t))
    alpha, sigma = schedule.alpha_sigma(tau)
    x_tau = x * _bcast(sigma / (1 - t), x)
    eps = eps_fn(x_tau, tau)
    x1 = (x - _bcast(1 - t, x) * eps) / _bcast(t, x)
    if clamp is not None:
        x1 = x1.clamp(-clamp, clamp)
    return x1 - eps


def velocity_from_x1(x1_hat: torch.Tensor, x: torch.Tensor, t: torch.Tensor, t_eps: float = 0.05) -> torch.Tensor:
    """v = (x1_hat - x) / (1 - t) on the linear path (JiT x-prediction; 1 - t clamped at t_eps)."""
    return (x1_hat - x) / _bcast((1 - t).clamp_min(t_eps), x)


def x1_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x1_hat = x + (1 - t) v (inverse of :func:`velocity_from_x1`)."""
    return x + _bcast(1 - t, x) * v


def eps_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_hat = x - t v on the linear path (x = t x1 + (1-t) eps, v = x1 - eps)."""
    return x - _bcast(t, x) * v
