"""DDPM ancestral sampling as DiT's release runs it: 250 respaced steps, eps-prediction, learned variance.

DiT (Peebles & Xie 2023; ``sample_ddp.py``): ``create_diffusion(str(250))`` respaces the 1000-step linear-beta
process (beta 1e-4 .. 0.02; :class:`~harness.objectives.schedules.DiscreteLinearBeta`) to 250 steps
(:mod:`harness.sample.respace`) and runs ADM's ``p_sample_loop`` from pure noise with ``clip_denoised=False``:
at each kept step j, from the network's eps,

    x0_hat = sqrt(1 / abar_j) x_j - sqrt(1 / abar_j - 1) eps
    mean   = coef_x0_j x0_hat + coef_xt_j x_j                 (the posterior q(x_{j-1} | x_j, x0_hat))
    x_{j-1} = mean + exp(log_var_j / 2) z   (z = 0 at the last step)

with ``learn_sigma``'s ``LEARNED_RANGE`` variance: the network's variance channels v in [-1, 1] give
log_var = (v + 1) / 2 log beta_j + (1 - v) / 2 log beta~_j (ADM ``p_mean_variance``; Nichol & Dhariwal 2021,
Eq. 15).  Without variance channels the variance is fixed: ``fixed_large`` (beta; DiT's ``create_diffusion``
default when ``learn_sigma=False``) or ``fixed_small`` (beta~).

The sampler asks the field for its native answer (:meth:`~harness.field.Field.predict`; a DDPM-trained unit or
guidance around one answers eps on its objective's path, :class:`~harness.objectives.base.Parameterisation`),
so it samples any eps-parameterised field natively: DiT's imported weights on the ``linear_1000`` table, and
the harness's own DDPM units on their continuous schedules (discretised by :meth:`Schedule.discrete`).
Per-step noise comes from ``noise.randn_like`` (:class:`~harness.sample.seeded.PerSampleNoise`: row b from
sample b's seed), so the samples do not depend on batching or the number of processes.
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.errors import ConfigError
from harness.core.registry import register
from harness.field import Field
from harness.objectives.base import Parameterisation
from harness.sample.respace import Respaced, space_timesteps

VARIANCES = ("auto", "learned_range", "fixed_large", "fixed_small")


@register("sampler", "ddpm")
class DDPMAncestral:
    """ADM/DiT ``p_sample_loop`` over ``steps`` respaced steps of a ``diffusion_steps``-step process: ``steps`` NFE.

    ``variance``: ``auto`` (learned range when the network has variance channels, else ``fixed_large`` as
    DiT's ``create_diffusion``), ``learned_range`` (required), ``fixed_large`` (beta) or ``fixed_small``
    (beta~).  ``clip_denoised`` clamps x0_hat to [-1, 1] (ADM for pixels; DiT's latents: off).
    """

    stochastic = True   # takes ``noise`` (per-sample generators) from ``harness.sample.seeded.generate``

    def __init__(self, steps: int = 250, diffusion_steps: int = 1000, variance: str = "auto",
                 clip_denoised: bool = False) -> None:
        if int(diffusion_steps) < 1:
            raise ConfigError(f"sampler.diffusion_steps must be >= 1, got {diffusion_steps}")
        if not 1 <= int(steps) <= int(diffusion_steps):
            raise ConfigError(f"sampler.steps must be in [1, sampler.diffusion_steps={diffusion_steps}] (respaced steps "
                              f"of the {diffusion_steps}-step process, DiT: 250), got {steps}")
        if variance not in VARIANCES:
            raise ConfigError(f"sampler.variance: {variance!r} is not one of {', '.join(VARIANCES)}")
        self.steps, self.diffusion_steps = int(steps), int(diffusion_steps)
        self.variance, self.clip_denoised = variance, bool(clip_denoised)
        self.kept = space_timesteps(self.diffusion_steps, [self.steps])
        self._cache: dict[Parameterisation, Respaced] = {}

    @classmethod
    def check_config(cls, cfg) -> None:
        """The sampled objective must answer eps (a velocity-trained network has no DDPM to walk)."""
        from harness.core.registry import registry
        from harness.objectives import build_objective

        method = registry("method").get(cfg["method"]["name"])
        node = dict(method.sampled_objective(cfg))
        param = build_objective(node).parameterisation
        if param.kind != "eps":
            raise ConfigError(f"sampler=ddpm needs an eps-prediction network, but objective={node['name']} answers "
                              f"{param.kind}", hint="use objective=ddpm_linear (or ddpm_cosine), or sampler=sde/euler/dopri5")
        param.schedule.discrete(int(cfg["sampler"].get("diffusion_steps", 1000)))   # the schedule's own step checks

    def process(self, param: Parameterisation) -> Respaced:
        """The respaced process of a field's eps parameterisation (cached per schedule)."""
        if param.kind != "eps" or param.schedule is None:
            raise ConfigError(f"sampler=ddpm needs a field answering eps (a DDPM-trained unit), this one answers "
                              f"{param.kind}", hint="use sampler=sde, euler, heun or dopri5 for velocity fields")
        if param not in self._cache:
            abar, taus = param.schedule.discrete(self.diffusion_steps)
            self._cache[param] = Respaced.build(abar, taus, self.kept)
        return self._cache[param]

    def call_times(self, field: Optional[Field] = None) -> list[float]:
        """Harness times t = 1 - tau of the network calls, in order (for cost counting without a network)."""
        param = getattr(field, "parameterisation", None)
        if param is None or param.kind != "eps":
            from harness.objectives.schedules import DiscreteLinearBeta

            param = Parameterisation("eps", DiscreteLinearBeta())
        return [1.0 - float(tau) for tau in self.process(param).net_tau.flip(0)]

    def log_variance(self, p: Respaced, j: int, variance: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Log-variance of step j: learned range from the variance channels, or the fixed choice."""
        mode = self.variance
        if mode == "auto":
            mode = "learned_range" if variance is not None else "fixed_large"
        if mode == "learned_range":
            if variance is None:
                raise ConfigError("sampler.variance=learned_range: the network has no variance channels",
                                  hint="set backbone.learn_sigma=true for DiT weights, or sampler.variance=fixed_large")
            frac = (variance + 1) / 2
            return frac * float(p.log_betas[j]) + (1 - frac) * float(p.log_var_small[j])
        value = float((p.log_var_large if mode == "fixed_large" else p.log_var_small)[j])
        return torch.full_like(like, value)

    @torch.no_grad()
    def __call__(self, field: Field, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                 noise=None) -> tuple[torch.Tensor, int]:
        """x (B, ...) pure noise at the last kept step -> samples; ``noise.randn_like`` draws the step noise
        (the global RNG when called without one)."""
        p = self.process(field.parameterisation)
        randn_like = noise.randn_like if noise is not None else torch.randn_like
        nfe = 0
        for j in reversed(range(p.steps)):
            pred = field.predict(x, 1.0 - float(p.net_tau[j]), y)
            nfe += 1
            if pred.kind != "eps":
                raise ConfigError(f"sampler=ddpm: the field answered {pred.kind}, not eps")
            abar = float(p.alphas_cumprod[j])
            x0 = (1 / abar) ** 0.5 * x - (1 / abar - 1) ** 0.5 * pred.value
            if self.clip_denoised:
                x0 = x0.clamp(-1, 1)
            mean = float(p.coef_x0[j]) * x0 + float(p.coef_xt[j]) * x
            if j == 0:
                x = mean
            else:
                x = mean + torch.exp(0.5 * self.log_variance(p, j, pred.variance, x)) * randn_like(x)
        return x, nfe
