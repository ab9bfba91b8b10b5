"""JiT-style x-prediction: the network predicts clean data, the loss is taken in velocity space.

JiT ("Back to Basics", Li & He 2025) predicts x1 directly with a pixel transformer and
regresses v_hat = (x1_hat - x_t) / (1 - t) against v = x1 - x0, with 1 - t clamped
(t_eps = 0.05) and its logit-normal time distribution (see ``time_sampler=jit``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.objectives.base import NetFn, Objective
from harness.objectives.conversions import velocity_from_x1
from harness.objectives.flow_matching import interpolate
from harness.core.registry import register


@register("objective", "x_prediction")
class XPrediction(Objective):
    def __init__(self, t_eps: float = 0.05, time_sampler: str = "jit",
                 time_sampler_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(time_sampler, time_sampler_kwargs)
        self.t_eps = float(t_eps)

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        xt = interpolate(x1, noise, t)
        v_hat = velocity_from_x1(net(xt, t, y), xt, t, self.t_eps)
        return (v_hat - (x1 - noise)).flatten(1).pow(2).mean(1)

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        return velocity_from_x1(net(x, t, y), x, t, self.t_eps)
