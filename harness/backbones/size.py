"""Size and per-forward cost of one network: parameters, activated parameters, FLOPs (for records and tables).

Kept apart from :mod:`harness.backbones.flops` (the counter) because activated parameters need
the MoE accounting of :mod:`harness.backbones.moe`, which itself counts with the counter.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.backbones.flops import ModelOrFactory, count_parameters, flop_count
from harness.backbones.moe import activated_parameters


def describe(model: ModelOrFactory, in_shape: tuple[int, ...], with_labels: bool = True) -> dict[str, float]:
    """``{params, params_activated, gflops_fmac, gmacs}`` of one single-item forward, for run records and tables."""
    if not isinstance(model, nn.Module):
        with torch.device("meta"):
            model = model()
    flops = flop_count(model, in_shape, 1, with_labels)
    # params_activated: per token on average (MoE layers count C experts; = params for dense nets)
    return {"params": count_parameters(model), "params_activated": activated_parameters(model),
            "gflops_fmac": flops / 1e9, "gmacs": flops / 2e9}
