"""ODE samplers over any :class:`~harness.field.Field`: Euler, Heun and adaptive dopri5 (torchdiffeq).

Samplers are pure functions of (field, initial noise, time grid, labels), as EDM2's
``edm_sampler`` (STYLE practice 7): no scheduler state, so any field and any method compose.
They integrate from t = 0 (noise) to t = 1 (data) and return the number of field
evaluations (NFE) they spent.
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.errors import ConfigError
from harness.field import Field
from harness.core.registry import register


class Counted:
    """Wraps a field and counts batched evaluations (one NFE = one call over the batch)."""

    def __init__(self, field: Field) -> None:
        self.field, self.nfe = field, 0

    def __call__(self, x, t, y=None):
        self.nfe += 1
        return self.field(x, t, y)


def time_grid(steps: int, t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    if steps < 1:
        raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@register("sampler", "euler")
class Euler:
    """x_{k+1} = x_k + h v(x_k, t_k): one NFE per step."""

    def __init__(self, steps: int = 50, t_start: float = 0.0, t_end: float = 1.0) -> None:
        self.ts = time_grid(steps, t_start, t_end)

    @torch.no_grad()
    def __call__(self, field: Field, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
        f = Counted(field)
        for t0, t1 in zip(self.ts[:-1].tolist(), self.ts[1:].tolist()):
            x = x + (t1 - t0) * f(x, t0, y)
        return x, f.nfe


@register("sampler", "heun")
class Heun:
    """Heun's second-order method (EDM, Karras et al. 2022, Alg. 1 without churn): 2 NFE per step."""

    def __init__(self, steps: int = 25, t_start: float = 0.0, t_end: float = 1.0) -> None:
        self.ts = time_grid(steps, t_start, t_end)

    @torch.no_grad()
    def __call__(self, field: Field, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
        f = Counted(field)
        for t0, t1 in zip(self.ts[:-1].tolist(), self.ts[1:].tolist()):
            h = t1 - t0
            d0 = f(x, t0, y)
            x_pred = x + h * d0
            x = x + 0.5 * h * (d0 + f(x_pred, t1, y))
        return x, f.nfe


@register("sampler", "dopri5")
class Dopri5:
    """Adaptive Dormand-Prince 5(4) from torchdiffeq (as SiT's ``integrators.py``)."""

    def __init__(self, atol: float = 1e-5, rtol: float = 1e-5, t_start: float = 0.0, t_end: float = 1.0) -> None:
        if atol <= 0 or rtol <= 0:
            raise ConfigError("sampler.atol and sampler.rtol must be > 0")
        self.atol, self.rtol, self.t_start, self.t_end = atol, rtol, t_start, t_end

    @torch.no_grad()
    def __call__(self, field: Field, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
        from torchdiffeq import odeint

        f = Counted(field)
        ts = torch.tensor([self.t_start, self.t_end], dtype=x.dtype, device=x.device)
        out = odeint(lambda t, z: f(z, t, y), x, ts, method="dopri5", atol=self.atol, rtol=self.rtol)
        return out[-1], f.nfe
