"""SiT's SDE sampler: Euler-Maruyama on the linear path with a velocity field (Ma et al. 2024, ``transport/``).

Score from velocity on our path x_t = t x1 + (1 - t) eps (t = 0 noise, t = 1 data, SiT's ``ICPlan``:
alpha_t = t, sigma_t = 1 - t, the same convention).  With v(x, t) = E[x1 - eps | x_t = x],

    x = t E[x1 | x] + (1 - t) E[eps | x]   and   v = E[x1 | x] - E[eps | x]
    =>  E[eps | x] = x - t v,

and Tweedie's formula for x_t = t x1 + (1 - t) eps gives grad log p_t(x) = -E[eps | x] / (1 - t), so

    s(x, t) = (t v - x) / (1 - t)

(SiT ``path.ICPlan.get_score_from_velocity``: (alpha / alpha' v - x) / (sigma^2 - alpha / alpha' sigma' sigma)
with alpha' = 1, sigma' = -1, i.e. var = 1 - t).  For any w(t) >= 0 the SDE

    dx = [v(x, t) + w(t) s(x, t)] dt + sqrt(2 w(t)) dW

has the probability-flow ODE's marginals p_t (its Fokker-Planck equation adds w (div(p s) + lap p) = 0
to the ODE's), so it samples p_1 = the data from p_0 = N(0, I).  SiT's code facts (``transport.py``,
``integrators.py``, ``train_utils.parse_sde_args``), reproduced:

* ``diffusion_form`` (SiT ``compute_diffusion``, ``norm`` its ``diffusion_norm``): ``sigma``: w = norm (1 - t)
  (SiT's default); ``SBDM``: w = norm (1 - t) / t (score-based DM's, singular at t = 0); ``constant``: norm;
  ``linear``: norm (1 - t); ``decreasing``: (norm cos(pi t) + 1)^2 / 4; ``increasing-decreasing``: norm sin(pi t)^2.
* the grid: ``steps`` points linspace(t0, t1), t0 = ``sample_eps`` for SBDM else 0, t1 = 1 - ``last_step_size``
  (1 - ``sample_eps`` without a last step); ``steps - 1`` Euler-Maruyama steps x_mean = x + f dt,
  x = x_mean + sqrt(2 w) sqrt(dt) z, each drawing z first and evaluating at the step's start;
* the last step (``last_step``): ``Mean`` (default): x + f(x, t1) ``last_step_size``, no noise; ``Euler``: the
  velocity alone; ``Tweedie``: x / t1 + (1 - t1)^2 / t1 s (E[x1 | x]); ``none``: stop at t1.
  SiT's defaults: 250 steps, ``sigma``, ``Mean``, ``last_step_size`` 0.04: 249 + 1 = 250 NFE.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from harness.core.errors import ConfigError
from harness.core.registry import register
from harness.field import Field

DIFFUSIONS: dict[str, Callable[[float, float], float]] = {
    "constant": lambda t, n: n,
    "SBDM": lambda t, n: n * (1 - t) / t,
    "sigma": lambda t, n: n * (1 - t),
    "linear": lambda t, n: n * (1 - t),
    "decreasing": lambda t, n: 0.25 * (n * math.cos(math.pi * t) + 1) ** 2,
    "increasing-decreasing": lambda t, n: n * math.sin(math.pi * t) ** 2,
}
LAST_STEPS = ("Mean", "Euler", "Tweedie", "none")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """grad log p_t(x) = (t v - x) / (1 - t) on the linear path (derivation in the module docstring)."""
    return (t * v - x) / (1 - t)


@register("sampler", "sde")
class EulerMaruyama:
    """SiT's ``sample_sde`` (Euler-Maruyama) over any velocity field: ``steps`` NFE with a last step."""

    stochastic = True   # takes ``noise`` (per-sample generators) from ``harness.sample.seeded.generate``

    def __init__(self, steps: int = 250, diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
                 last_step: str = "Mean", last_step_size: float = 0.04, sample_eps: float = 1e-3) -> None:
        if int(steps) < 2:
            raise ConfigError(f"sampler.steps must be >= 2 (grid points of SiT's linspace(t0, t1, steps)), got {steps}")
        if diffusion_form not in DIFFUSIONS:
            raise ConfigError(f"sampler.diffusion_form: {diffusion_form!r} is not one of {', '.join(DIFFUSIONS)}")
        if last_step not in LAST_STEPS:
            raise ConfigError(f"sampler.last_step: {last_step!r} is not one of {', '.join(LAST_STEPS)}")
        if diffusion_norm < 0:
            raise ConfigError(f"sampler.diffusion_norm must be >= 0, got {diffusion_norm}")
        if not 0 <= sample_eps < 0.5:
            raise ConfigError(f"sampler.sample_eps must be in [0, 0.5), got {sample_eps}")
        size = 0.0 if last_step == "none" else float(last_step_size)
        if last_step != "none" and not 0 < size < 1:
            raise ConfigError(f"sampler.last_step_size must be in (0, 1) with last_step={last_step}, got {last_step_size}")
        if diffusion_form == "SBDM" and sample_eps == 0:
            raise ConfigError("sampler.sample_eps must be > 0 with diffusion_form=SBDM (w = (1 - t) / t at t = 0)")
        self.steps, self.form, self.norm = int(steps), diffusion_form, float(diffusion_norm)
        self.last_step, self.last_step_size = last_step, size
        t0 = sample_eps if diffusion_form == "SBDM" else 0.0          # SiT check_interval, velocity model, sde=True
        t1 = 1 - sample_eps if size == 0 else 1 - size
        self.ts = torch.linspace(t0, t1, self.steps, dtype=torch.float64).tolist()

    def diffusion(self, t: float) -> float:
        return DIFFUSIONS[self.form](t, self.norm)

    def drift(self, field: Field, x: torch.Tensor, t: float, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(SDE drift v + w s, velocity v) at (x, t)."""
        v = field(x, t, y)
        return v + self.diffusion(t) * score_from_velocity(v, x, t), v

    def call_times(self, field: Optional[Field] = None) -> list[float]:
        """Harness times of the field calls, in order (for cost counting)."""
        return self.ts[:-1] + ([self.ts[-1]] if self.last_step != "none" else [])

    @torch.no_grad()
    def __call__(self, field: Field, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                 noise=None) -> tuple[torch.Tensor, int]:
        """x (B, ...) noise at t0 -> samples at t = 1; ``noise.randn_like`` draws dW (the global RNG without one)."""
        randn_like = noise.randn_like if noise is not None else torch.randn_like
        dt = self.ts[1] - self.ts[0]
        nfe = 0
        for t in self.ts[:-1]:
            z = randn_like(x)
            f, _ = self.drift(field, x, t, y)
            nfe += 1
            x = x + f * dt + math.sqrt(2 * self.diffusion(t) * dt) * z
        t1 = self.ts[-1]
        if self.last_step == "none":
            return x, nfe
        f, v = self.drift(field, x, t1, y)
        nfe += 1
        if self.last_step == "Mean":
            x = x + f * self.last_step_size
        elif self.last_step == "Euler":
            x = x + v * self.last_step_size
        else:  # Tweedie: E[x1 | x] = x / t + (1 - t)^2 / t * s
            x = x / t1 + (1 - t1) ** 2 / t1 * score_from_velocity(v, x, t1)
        return x, nfe
