"""N networks behind one module, each owning a time interval: the jointly trained form of seed 000, Alg. 1.

Alg. 1 trains the experts in one loop: ``i = sample_model_idx(N)``, ``t = sample_t(bounds[i],
bounds[i+1])``, loss on ``models[i]`` only.  Here the N experts live in one
:class:`TimeExperts` module (one unit, one checkpoint, one optimizer) whose forward sends
every sample to the expert owning its t, and the objective's time sampler
``per_batch_expert`` (:mod:`harness.objectives.time_samplers`) draws one expert per batch,
so each step touches exactly one expert, as in Alg. 1.  Experts that a step does not call
get no gradient (``None``), so AdamW skips them (moments and weight decay included): each
expert's optimizer state only sees its own steps.  The EMA copy is updated every step for
all experts; for an expert that was not stepped this moves its EMA towards its unchanged
weights, a small difference from N independent EMAs (recorded in the method's describe).

The independent form (one unit per expert, ``Piecewise`` at sampling) remains the default;
this one exists so the two trainings can be compared under identical budgets.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from harness.backbones.build import build_backbone
from harness.core.errors import ConfigError
from harness.core.intervals import check_boundaries
from harness.core.registry import register


@register("backbone", "time_experts")
class TimeExperts(nn.Module):
    """Expert i (a copy of the ``expert`` backbone node, own weights) answers for t in [b_i, b_{i+1})."""

    # Alg. 1 steps one expert per batch, so under DDP the other experts get no gradient that step
    ddp_find_unused_parameters = True

    def __init__(self, in_shape: tuple[int, ...], num_classes: int = 0, *, expert: Mapping[str, Any],
                 boundaries: Sequence[float]) -> None:
        super().__init__()
        if not isinstance(expert, Mapping) or "name" not in expert:
            raise ConfigError("backbone.expert must be a backbone node with a name, e.g. {name: unet, ...}")
        if expert["name"] == "time_experts":
            raise ConfigError("backbone.expert cannot itself be time_experts")
        self.boundaries = check_boundaries(boundaries, key="backbone.boundaries")
        self.experts = nn.ModuleList(build_backbone(expert, in_shape, num_classes)
                                     for _ in range(len(self.boundaries) + 1))
        self.register_buffer("edges", torch.tensor(self.boundaries, dtype=torch.float64), persistent=False)

    def expert_index(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) index of the expert owning each t (the number of boundaries <= t), as Piecewise."""
        return torch.bucketize(t.detach().to(torch.float64), self.edges.to(t.device), right=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """x (B, ...), t (B,), y (B,) | None -> (B, ...): each sample through its own expert only."""
        idx = self.expert_index(t)
        first = int(idx[0])
        if bool((idx == first).all()):  # a whole batch in one interval (Alg. 1 training, every sampling step)
            return self.experts[first](x, t, y, **kwargs)
        out = None
        for i, expert in enumerate(self.experts):
            sel = (idx == i).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            part = expert(x[sel], t[sel], None if y is None else y[sel], **kwargs)
            if out is None:
                out = part.new_zeros((x.shape[0], *part.shape[1:]))
            out = out.index_put((sel,), part)
        return out
