"""Router objective: cross-entropy -log p_phi(k | x_t, t) against the cluster id (seed 003, Eq. 2, Sec. 6.3).

Why an objective: the router is then an ordinary training unit (same trainer, seeded
draws, atomic checkpoints, resume and reuse by hash as every expert).  x_t is drawn on the
harness path x_t = t x1 + (1 - t) x0 with t ~ the configured time sampler over [0, 1], the
same path the experts' mixture is sampled on; the seed draws its router times uniformly
too (Sec. 6.3, "Timestep Sampling").  A router has no velocity: asking for one is an error.
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.errors import ConfigError
from harness.objectives.base import NetFn, Objective
from harness.objectives.flow_matching import interpolate
from harness.core.registry import register


@register("objective", "router_ce")
class RouterCrossEntropy(Objective):
    """Per-sample cross-entropy of the router's logits (B, K) at (x_t, t) against cluster ids y (B,)."""

    MAKES_FIELD = False

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if y is None:
            raise ConfigError("objective router_ce: the data carry no cluster labels",
                              hint="the router unit's data node needs labels: cluster")
        logits = net(interpolate(x1, noise, t), t, None)
        if int(y.max()) >= logits.shape[1]:
            raise ConfigError(f"objective router_ce: label {int(y.max())} is outside the router's {logits.shape[1]} clusters",
                              hint="train the router with train.label_dropout=0 (a dropped label is the null class)")
        return torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        raise TypeError("router_ce trains a classifier p(k | x_t, t), not a velocity field; wrap it in harness.field.mixture.NetRouter")
