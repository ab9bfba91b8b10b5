"""GFLOPs of guided sampling per NFE and per image, counted with FlopCounterMode on the real call.

A guided step runs the strong branch and, inside the guidance interval, the weak one; with
Sparse Guidance each branch runs its routed forward at its own gamma, so the cost is
*measured* by calling the field itself (batch of one) under ``torch.utils.flop_counter``.
Full-scale fields are built on the ``meta`` device and counted from shapes alone.

Two conventions are reported, named (see :mod:`harness.backbones.flops`):

* ``gflops_torch``: FlopCounterMode's total, 2 FLOPs per multiply-add, attention included;
* ``gflops_seed004``: multiply-adds of the linear and convolution layers only, the fused
  attention kernel (QK^T and AV) not counted.  This is what seed 004 prints as "GFLOPS":
  its SiT-XL/2 + routing forward, 114.42 (Tab. 2), is the 114.40 G multiply-adds of
  SiT-XL/2's matmuls/convs at 256 tokens, while DiT's 118.6 also counts the 4.2 G of the
  attention products.  A counter that skips ``scaled_dot_product_attention`` (as fvcore does
  for an op it has no handle for) and counts one per multiply-add gives exactly this.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch.utils import flop_counter

from harness.backbones.flops import _custom_mapping
from harness.field import Field


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
    """Run ``fn()`` under FlopCounterMode and split its FLOPs into attention and the rest."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with counter, torch.no_grad():
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    layers = sum(int(v) for op, v in by_op.items() if _op_name(op) in LAYER_OPS)
    total = int(counter.get_total_flops())
    return OpCount(total, total - layers)


def _inputs(in_shape: Sequence[int], num_classes: int, device: torch.device | str):
    x = torch.zeros((1, *in_shape), device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if num_classes > 0 else None
    return x, y


def field_call_cost(field: Field, in_shape: Sequence[int], num_classes: int, *, t: float = 0.5,
                    device: torch.device | str = "cpu") -> OpCount:
    """FLOPs of one NFE of ``field`` on one image at time ``t`` (both branches when guided at ``t``)."""
    x, y = _inputs(in_shape, num_classes, device)
    return count_call(lambda: field(x, t, y))


def strong_only_cost(field: Field, in_shape: Sequence[int], num_classes: int, *, device: torch.device | str = "cpu") -> OpCount:
    """FLOPs of a guided field's call outside its interval: the strong branch alone."""
    from harness.guidance import Guided

    if not isinstance(field, Guided):
        return field_call_cost(field, in_shape, num_classes, device=device)
    x, y = _inputs(in_shape, num_classes, device)
    tt = torch.full((1,), 0.5, device=device)
    return count_call(lambda: field.branch(field.strong, x, tt, y, 0))


def sampler_times(sampler: Callable, in_shape: Sequence[int]) -> list[float]:
    """The times at which ``sampler`` calls its field (probed with a zero field; fixed-grid samplers)."""
    times: list[float] = []

    def probe(x: torch.Tensor, t: Any, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        times.append(float(t.reshape(-1)[0]) if torch.is_tensor(t) else float(t))
        return torch.zeros_like(x)

    sampler(probe, torch.zeros((1, *in_shape)), None)
    return times


def guided_cost(field: Field, sampler: Callable, in_shape: Sequence[int], num_classes: int, *,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """GFLOPs per guided NFE and per image (sum over the sampler's calls; the weak branch only inside the interval).

    Returns both conventions (``*_torch``, ``*_seed004``) and the number of calls.
    """
    from harness.guidance import Guided

    times = sampler_times(sampler, in_shape)
    per_nfe = field_call_cost(field, in_shape, num_classes, device=device)
    if isinstance(field, Guided):
        lo, hi = field.interval
        inside = sum(lo <= t <= hi for t in times)
        outside_cost = strong_only_cost(field, in_shape, num_classes, device=device)
    else:
        inside, outside_cost = len(times), per_nfe
    per_image = per_nfe * inside + outside_cost * (len(times) - inside)
    return {"nfe": len(times), "guided_calls": inside,
            "gflops_per_nfe_torch": per_nfe.gflops_torch, "gflops_per_nfe_seed004": per_nfe.gflops_seed004,
            "gflops_per_image_torch": per_image.gflops_torch, "gflops_per_image_seed004": per_image.gflops_seed004}


def meta_field(cfg: Mapping[str, Any], in_shape: Sequence[int], num_classes: int, method=None) -> tuple[Field, Callable]:
    """The configured guided field with every network built on the meta device (shapes only), and its sampler.

    Counts a full-scale config (SiT-XL/2 on ImageNet latents) here without weights or data.
    """
    from harness.evaluate.pipeline import build_sampler
    from harness.experiment import method_for
    from harness.guidance import build_guidance
    from harness.objectives import build_objective
    from harness.units import build_backbone

    if method is None:
        method = method_for(cfg, prepare=False)
        if getattr(method, "boundaries", []) is None:  # CBS before its aux model: sizes do not depend on the boundaries
            method.boundaries = [i / method.n for i in range(1, method.n)]
    guidance = build_guidance(cfg)
    parts = {}
    with torch.device("meta"):
        for role, spec in {**method.units(), **guidance.units()}.items():
            parts[role] = (build_backbone(spec.backbone, tuple(in_shape), num_classes).eval(), build_objective(spec.objective))
    field = method.assemble({r: p for r, p in parts.items() if r in method.units()})
    return guidance.wrap(field, parts, num_classes), build_sampler(cfg)


def config_cost(cfg: Mapping[str, Any], method=None) -> dict[str, Any]:
    """GFLOPs per NFE and per image of a config's guided sampler, from shapes only (meta device).

    ``method``: an already prepared method (its real boundaries); by default one is built unprepared.
    """
    from harness.describe import data_shape

    shape, classes, _ = data_shape(cfg["data"])
    field, sampler = meta_field(cfg, shape, classes, method)
    return guided_cost(field, sampler, shape, classes, device="meta")
