"""Flow matching with the linear interpolant (seed 000, Sec. 2; SiT's "Linear" path, v-prediction)."""
from __future__ import annotations

from typing import Optional

import torch

from harness.objectives.base import NetFn, Objective, _bcast
from harness.core.registry import register


def interpolate(x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x1 + (1 - t) x0: the harness path (t = 0 noise, t = 1 data)."""
    tb = _bcast(t, x1)
    return tb * x1 + (1 - tb) * noise


@register("objective", "flow_matching")
class FlowMatching(Objective):
    """Regress v = x1 - x0 at x_t (conditional flow matching, Lipman et al. 2023; torchcfm's CFM)."""

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        xt = interpolate(x1, noise, t)
        err = net(xt, t, y) - (x1 - noise)
        return err.flatten(1).pow(2).mean(1)

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        return net(x, t, y)
