"""GFLOPs of a config's sampler per NFE and per image, counted with FlopCounterMode on the real call.

A guided step runs the strong branch and, inside the guidance interval, the weak one; with
Sparse Guidance each branch runs its routed forward at its own gamma, so the cost is
*measured* by calling the assembled field itself (batch of one) through the one counter,
:func:`harness.backbones.flops.count_call`.  Full-scale fields are built on the ``meta``
device and counted from shapes alone (:func:`harness.pipeline.assemble.assemble_meta`).
Both conventions of :mod:`harness.backbones.flops` are reported, named (``*_torch``: 2 FLOPs
per multiply-add with attention; ``*_seed004``: seed 004 Tab. 2's linear/conv multiply-adds).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from harness.api.method import Method
from harness.backbones.flops import OpCount, count_call
from harness.data.shapes import data_shape
from harness.field.base import Field
from harness.field.guided import Guided
from harness.pipeline.assemble import assemble_meta


def _inputs(in_shape: Sequence[int], num_classes, device: torch.device | str):
    """One input and its condition: a class label, none (``num_classes`` 0), or, when ``num_classes`` is a
    (text_len, text_dim) pair, one caption embedding (a text backbone's condition, seed 003 Eq. 18)."""
    x = torch.zeros((1, *in_shape), device=device)
    if isinstance(num_classes, tuple):
        return x, torch.zeros((1, *num_classes), device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if num_classes > 0 else None
    return x, y


def field_call_cost(field: Field, in_shape: Sequence[int], num_classes: int, *, t: float = 0.5,
                    device: torch.device | str = "cpu") -> OpCount:
    """FLOPs of one NFE of ``field`` on one image at time ``t`` (both branches when guided at ``t``)."""
    x, y = _inputs(in_shape, num_classes, device)
    return count_call(lambda: field(x, t, y))


def strong_only_cost(field: Field, in_shape: Sequence[int], num_classes: int, *, device: torch.device | str = "cpu") -> OpCount:
    """FLOPs of a guided field's call outside its interval: the strong branch alone."""
    if not isinstance(field, Guided):
        return field_call_cost(field, in_shape, num_classes, device=device)
    x, y = _inputs(in_shape, num_classes, device)
    tt = torch.full((1,), 0.5, device=device)
    return count_call(lambda: field.branch(field.strong, x, tt, y, 0))


def sampler_times(sampler: Callable, in_shape: Sequence[int], field: Optional[Field] = None) -> list[float]:
    """The times at which ``sampler`` calls its field: its ``call_times(field)`` when it states them (the DDPM
    sampler, which needs an eps field to run), else probed with a zero field (fixed-grid samplers)."""
    if hasattr(sampler, "call_times"):
        return list(sampler.call_times(field))
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
    times = sampler_times(sampler, in_shape, field)
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


def config_cost(cfg: Mapping[str, Any], method: Optional[Method] = None) -> dict[str, Any]:
    """GFLOPs per NFE and per image of a config's guided sampler, from shapes only (meta device).

    ``method``: an already prepared method (its real boundaries); by default one is built unprepared.
    """
    shape, classes, _ = data_shape(cfg["data"])
    field, sampler = assemble_meta(cfg, shape, classes, method)
    bb = cfg["backbone"]
    condition = (int(bb.get("text_len", 77)), int(bb["text_dim"])) if bb.get("text_dim") else classes
    return guided_cost(field, sampler, shape, condition, device="meta")


def log_cost(cfg: Mapping[str, Any], method: Method, tracker, run_id: str) -> dict[str, Any]:
    """Log ``gflops_per_nfe`` / ``gflops_per_image`` (torch's 2 FLOPs per multiply-add, counted on the meta device).

    Seed 004's convention (linear/conv multiply-adds only) is logged beside them with a ``_seed004``
    suffix.  A backbone whose forward cannot run on the meta device (data-dependent shapes) gets a
    tag saying so instead of a number: a missing count is never a guessed one.
    """
    try:
        cost = config_cost(cfg, method)
    except Exception as err:  # noqa: BLE001 - counting must never fail the experiment it describes
        tracker.set_tags(run_id, {"harness.gflops_error": f"{type(err).__name__}: {err}"[:500]})
        return {}
    metrics = {"gflops_per_nfe": cost["gflops_per_nfe_torch"], "gflops_per_image": cost["gflops_per_image_torch"],
               "gflops_per_nfe_seed004": cost["gflops_per_nfe_seed004"],
               "gflops_per_image_seed004": cost["gflops_per_image_seed004"]}
    tracker.log_metrics(run_id, metrics)
    return metrics
