"""The one FLOP counter: torch's FlopCounterMode around a call, never a guess (DESIGN.md "Protocol").

Every count in the harness (per-forward GFLOPs of a unit, a guided sampler's GFLOPs per NFE,
MoE forwards on real tensors) goes through :func:`count_call`, which also splits off the FLOPs
of attention kernels.  Conventions, all reported under their own names:

* ``gflops_fmac`` / ``gflops_torch``: torch's count, 2 FLOPs per multiply-add, attention included;
* ``gmacs``: multiply-adds = FLOPs / 2.  DiT/SiT (and seeds 000, 002, 004 after them)
  report this figure as "Gflops" (DiT-XL/2 = 118.6, DiT-B/2 = 23.01; seed 000 Tab. 2
  JiT-B/4 "25 GFLOPs");
* ``gflops_seed004``: multiply-adds of linear and convolution layers only, attention products
  not counted: seed 004's SiT-XL/2 + routing forward, 114.42 (Tab. 2), is the 114.40 G
  multiply-adds of SiT-XL/2's matmuls/convs at 256 tokens, while DiT's 118.6 also counts the
  4.2 G of the attention products (a counter that skips ``scaled_dot_product_attention``, as
  fvcore does for an op it has no handle for, gives exactly this).

Counting runs on the ``meta`` device whenever possible: a factory is built under
``torch.device("meta")`` and a real model is called with meta copies of its parameters
(``torch.func.functional_call``), so SiT-XL/2 (675M parameters) is counted from shapes
alone in well under a second, without allocating a weight.  Only matmul/conv/attention
kernels are counted (norms, activations and embeddings lookups are not), as fvcore did
for DiT.
"""
from __future__ import annotations

import dataclasses
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


# Kernels of linear and convolution layers; everything else FlopCounterMode counts is attention
# (fused SDPA on CPU/GPU, its bmm decomposition on the meta device).
LAYER_OPS = ("mm", "addmm", "convolution", "_convolution")


@dataclasses.dataclass(frozen=True)
class OpCount:
    """FLOPs (2 per multiply-add) of one call: total, and the part outside linear/conv layers (attention)."""

    total: int
    attention: int

    @property
    def gflops_torch(self) -> float:
        """FlopCounterMode's convention: 2 FLOPs per multiply-add, attention included."""
        return self.total / 1e9

    @property
    def gflops_seed004(self) -> float:
        """Seed 004 Tab. 2's convention: multiply-adds of linear/conv layers, attention kernels not counted."""
        return (self.total - self.attention) / 2e9

    def __add__(self, other: "OpCount") -> "OpCount":
        return OpCount(self.total + other.total, self.attention + other.attention)

    def __mul__(self, k: int) -> "OpCount":
        return OpCount(self.total * int(k), self.attention * int(k))


def _op_name(op: Any) -> str:
    """``aten.addmm`` / ``aten.addmm.default`` -> ``addmm``."""
    parts = str(op).split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def count_call(fn: Callable[[], Any]) -> OpCount:
    """Run ``fn()`` under FlopCounterMode (no grad) and split its FLOPs into attention and the rest."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with counter, torch.no_grad():
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    layers = sum(int(v) for op, v in by_op.items() if _op_name(op) in LAYER_OPS)
    total = int(counter.get_total_flops())
    return OpCount(total, total - layers)


def _inputs(model: nn.Module, in_shape: tuple[int, ...], batch: int, with_labels: bool,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = torch.zeros((batch, *in_shape), device=device)
    t = torch.full((batch,), 0.5, device=device)
    num_classes = int(getattr(model, "num_classes", 0))
    y = torch.zeros(batch, dtype=torch.long, device=device) if with_labels and num_classes > 0 else None
    if getattr(model, "text_dim", None) is not None:  # a text model's condition: caption embeddings (B, L, E)
        y = torch.zeros((batch, model.text_len, model.text_dim), device=device) if with_labels else None
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
    return count_call(lambda: call(x, t, y)).total


def gflops_per_forward(model_or_factory: ModelOrFactory, in_shape: tuple[int, ...], batch: int = 1,
                       with_labels: bool = True, **forward_kwargs: Any) -> float:
    """GFLOPs per forward, 2 FLOPs per multiply-add (torch's convention); see :func:`flop_count`."""
    return flop_count(model_or_factory, in_shape, batch, with_labels, **forward_kwargs) / 1e9


def gmacs_per_forward(model_or_factory: ModelOrFactory, in_shape: tuple[int, ...], batch: int = 1,
                      with_labels: bool = True, **forward_kwargs: Any) -> float:
    """Giga multiply-adds per forward: the figure DiT/SiT papers print as "Gflops"."""
    return gflops_per_forward(model_or_factory, in_shape, batch, with_labels, **forward_kwargs) / 2
