"""Size and per-forward cost of one network: parameters, activated parameters, FLOPs (for records and tables).

Kept apart from :mod:`harness.backbones.flops` (the counter) because activated parameters need
the MoE accounting of :mod:`harness.backbones.moe`, which itself counts with the counter.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.backbones.flops import ModelOrFactory, count_parameters, flop_count
from harness.backbones.moe import activated_parameters, moe_layers


def describe(model: ModelOrFactory, in_shape: tuple[int, ...], with_labels: bool = True) -> dict[str, float]:
    """``{params, params_activated, params_routing, gflops_fmac, gmacs}`` of one single-item forward.

    ``params_activated``: what one token uses on average: every dense part, and in each MoE layer its
    router and capacity predictor (every token runs them; ``params_routing`` is their sum over layers)
    plus C_train experts' worth of expert weights.  So an MoE model at C_train = 1 activates *more*
    than its dense twin, by ``params_routing`` (seed 002 mini: +2.7 % for DiffMoE, whose predictor
    is a D x D MLP; +0.08 % for TC/EC's routers alone), and its FLOPs count the predictor too.
    """
    if not isinstance(model, nn.Module):
        with torch.device("meta"):
            model = model()
    flops = flop_count(model, in_shape, 1, with_labels)
    routing = sum(layer.router_parameters() for layer in moe_layers(model))
    return {"params": count_parameters(model), "params_activated": activated_parameters(model),
            "params_routing": float(routing), "gflops_fmac": flops / 1e9, "gmacs": flops / 2e9}
