"""Parameters and FLOPs per forward, counted (never guessed) with torch's FlopCounterMode.

DESIGN.md ("Protocol"): GFLOPs per forward are counted.  Two conventions are in use and
both are reported, named:

* ``gflops_fmac``: torch's count, 2 FLOPs per multiply-add (what FlopCounterMode returns);
* ``gmacs``: multiply-adds = FLOPs / 2.  DiT/SiT (and seeds 000, 002, 004 after them)
  report this figure as "Gflops" (DiT-XL/2 = 118.6, DiT-B/2 = 23.01; seed 004 Tab. 2
  SiT-XL/2 + routing 114.42, seed 000 Tab. 2 JiT-B/4 "25 GFLOPs").

Counting runs on the ``meta`` device whenever possible: a factory is built under
``torch.device("meta")`` and a real model is called with meta copies of its parameters
(``torch.func.functional_call``), so SiT-XL/2 (675M parameters) is counted from shapes
alone in well under a second, without allocating a weight.  Only matmul/conv/attention
kernels are counted (norms, activations and embeddings lookups are not), as fvcore did
for DiT.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import nn
from torch.utils import flop_counter

ModelOrFactory = Union[nn.Module, Callable[[], nn.Module]]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as the fixed sin-cos position embedding excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """CPU's fused attention kernel is missing from torch's flop registry: count it as SDPA."""
    return flop_counter.sdpa_flop_count(query, key, value)


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_sdpa_flops} if op is not None else {}


def _inputs(model: nn.Module, in_shape: tuple[int, ...], batch: int, with_labels: bool,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = torch.zeros((batch, *in_shape), device=device)
    t = torch.full((batch,), 0.5, device=device)
    num_classes = int(getattr(model, "num_classes", 0))
    y = torch.zeros(batch, dtype=torch.long, device=device) if with_labels and num_classes > 0 else None
    return x, t, y


def flop_count(model_or_factory: ModelOrFactory, in_shape: tuple[int, ...], batch: int = 1,
               with_labels: bool = True, **forward_kwargs: Any) -> int:
    """FLOPs (2 per multiply-add) of one forward of a batch of ``batch`` items of ``in_shape``.

    ``model_or_factory``: an ``nn.Module`` (counted in its current train/eval mode, with
    meta copies of its weights) or a zero-argument callable building one (built on the
    meta device).  ``forward_kwargs`` go to the forward (e.g. ``gamma=0.5``).
    """
    meta = torch.device("meta")
    if isinstance(model_or_factory, nn.Module):
        model = model_or_factory
        state = {k: torch.empty_like(v, device=meta) for k, v in
                 [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
        call = lambda *a: torch.func.functional_call(model, state, a, forward_kwargs)  # noqa: E731
    else:
        with meta:
            model = model_or_factory()
        call = lambda *a: model(*a, **forward_kwargs)  # noqa: E731
    x, t, y = _inputs(model, tuple(in_shape), batch, with_labels, meta)
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with counter, torch.no_grad():
        call(x, t, y)
    return int(counter.get_total_flops())


def gflops_per_forward(model_or_factory: ModelOrFactory, in_shape: tuple[int, ...], batch: int = 1,
                       with_labels: bool = True, **forward_kwargs: Any) -> float:
    """GFLOPs per forward, 2 FLOPs per multiply-add (torch's convention); see :func:`flop_count`."""
    return flop_count(model_or_factory, in_shape, batch, with_labels, **forward_kwargs) / 1e9


def gmacs_per_forward(model_or_factory: ModelOrFactory, in_shape: tuple[int, ...], batch: int = 1,
                      with_labels: bool = True, **forward_kwargs: Any) -> float:
    """Giga multiply-adds per forward: the figure DiT/SiT papers print as "Gflops"."""
    return gflops_per_forward(model_or_factory, in_shape, batch, with_labels, **forward_kwargs) / 2


def describe(model: ModelOrFactory, in_shape: tuple[int, ...], with_labels: bool = True) -> dict[str, float]:
    """``{params, params_activated, gflops_fmac, gmacs}`` of one single-item forward, for run records and tables."""
    if not isinstance(model, nn.Module):
        with torch.device("meta"):
            model = model()
    from harness.backbones.moe import activated_parameters

    flops = flop_count(model, in_shape, 1, with_labels)
    # params_activated: per token on average (MoE layers count C experts; = params for dense nets)
    return {"params": count_parameters(model), "params_activated": activated_parameters(model),
            "gflops_fmac": flops / 1e9, "gmacs": flops / 2e9}
