"""Respaced DDPM processes: keep S of a T-step diffusion and recompute the betas (ADM's ``respace.py``).

DiT samples its 1000-step training process in 250 steps (``create_diffusion("250")``): ADM's
``space_timesteps(1000, [250])`` keeps, in each of the equal sections of the original steps, a count of
steps spread at the fractional stride (size - 1) / (count - 1), rounded (Python's ``round``); then
``SpacedDiffusion`` sets beta'_j = 1 - abar_{k_j} / abar_{k_{j-1}} over the kept steps k_0 < k_1 < ...
(abar_{k_{-1}} = 1), so the respaced chain has the same cumulative alphas at the kept steps, and calls
the network at the kept step's original index (DiT's ``_WrappedModel``: ``map_tensor[ts]``, no rescaling).
The posterior q(x_{j-1} | x_j, x_0) of the respaced chain (Ho et al. 2020, Eq. 6-7; ADM
``gaussian_diffusion.py``) gives the coefficients :class:`Respaced` precomputes, in float64 as ADM does.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from harness.core.errors import ConfigError


def space_timesteps(num_timesteps: int, section_counts: Sequence[int]) -> list[int]:
    """The kept steps (sorted) of a ``num_timesteps`` process, ``section_counts[i]`` from the i-th equal section.

    ADM/DiT ``respace.space_timesteps`` semantics: sections of ``num_timesteps // len(counts)`` steps, the first
    ``num_timesteps % len(counts)`` one longer; in a section of ``size`` steps, ``count`` steps at the
    accumulated fractional stride (size - 1) / (count - 1) from its start, each rounded to the nearest index.
    """
    counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"sampler.steps: every section count must be >= 1, got {counts}")
    size_per, extra = divmod(int(num_timesteps), len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(f"sampler.steps={sum(counts)}: cannot take {count} steps from a section of {size} of the "
                              f"{num_timesteps}-step process", hint=f"use at most {num_timesteps} steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


@dataclasses.dataclass(frozen=True)
class Respaced:
    """The kept steps of a DDPM process and their ancestral-step coefficients (all (S,) float64).

    ``timesteps[j]``: original index of respaced step j; ``net_tau[j]``: the network time there.
    ``log_var_small`` is log beta~ with its first entry replaced by the second (ADM's
    ``posterior_log_variance_clipped``: beta~_0 = 0), ``log_var_large`` is log beta with beta_0 replaced by
    beta~_1 (ADM's ``FIXED_LARGE``); learned-range variances interpolate ``log_var_small`` .. ``log beta``.
    """

    timesteps: torch.Tensor
    net_tau: torch.Tensor
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    log_var_small: torch.Tensor
    log_var_large: torch.Tensor
    log_betas: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    @classmethod
    def build(cls, alphas_cumprod: torch.Tensor, net_tau: torch.Tensor, kept: Sequence[int]) -> "Respaced":
        """From the original process's cumulative alphas (T,) and network times (T,), keeping ``kept``."""
        idx = torch.tensor(sorted(kept), dtype=torch.long)
        abar = alphas_cumprod.double()[idx]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1 - abar / prev
        alphas = 1 - betas
        post = betas * (1 - prev) / (1 - abar)
        post_clipped = torch.cat([post[1:2], post[1:]]) if len(post) > 1 else post
        large = torch.cat([post[1:2], betas[1:]]) if len(post) > 1 else betas
        return cls(timesteps=idx, net_tau=net_tau.double()[idx], betas=betas, alphas_cumprod=abar,
                   alphas_cumprod_prev=prev, posterior_variance=post, log_var_small=torch.log(post_clipped),
                   log_var_large=torch.log(large), log_betas=torch.log(betas),
                   coef_x0=betas * prev.sqrt() / (1 - abar), coef_xt=(1 - prev) * alphas.sqrt() / (1 - abar))
