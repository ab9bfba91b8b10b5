"""From a config to the Field a sampler integrates: the method, its units, and the guidance around it.

One assembly path for every consumer: ``harness run``/``sample``/``eval`` load the units'
checkpoints (:func:`assemble`); ``harness describe``, GFLOPs counting and sweep constraints build
the same networks on the meta device from shapes alone (:func:`assemble_meta`).  Both go through
:func:`wrap_parts`, so what is counted is what is sampled.  Methods and guidances are found through
the registry by the config's names; a method that must run :meth:`~harness.api.method.Method.prepare`
before its units are known (CBS's aux model) is counted through its ``stand_in()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from harness.api.guidance import build_guidance
from harness.api.method import Method
from harness.backbones.build import build_backbone
from harness.core.registry import get
from harness.field.base import Field
from harness.objectives import build_objective
from harness.train.units import UnitSpec


def method_for(cfg: Mapping[str, Any], *, prepare: bool = True, datasets=None, tracker=None,
               parent_id: Optional[str] = None) -> Method:
    """The configured method, prepared (its units decided) unless ``prepare=False``."""
    node = cfg["method"]
    method = get("method", node["name"])(cfg, **{k: v for k, v in node.items() if k != "name"})
    if prepare:
        method.prepare(datasets=datasets, tracker=tracker, parent_id=parent_id)
    return method


def experiment_units(cfg: Mapping[str, Any], method: Method) -> dict[str, UnitSpec]:
    """Every unit a run trains: the method's plus the guidance's (AutoGuidance's weak model).

    ``harness run``/``train`` and sweep planning all use this, so a sweep's DAG has every unit.
    """
    return {**method.units(), **build_guidance(cfg).units()}


def field_classes(parts: Mapping[str, tuple[torch.nn.Module, Any]], classes: Mapping[str, int]) -> int:
    """The label classes the guided field conditions on: the most over the parts that answer a velocity field.

    A DDM router's classes are its k clusters, not the data's labels; counted, a class-conditional DDM with
    k > num_classes would take a cluster id as CFG's null class.
    """
    return max((int(classes[r]) for r, (_, objective) in parts.items()
                if getattr(objective, "MAKES_FIELD", True)), default=0)


def wrap_parts(cfg: Mapping[str, Any], method: Method, parts: Mapping[str, tuple[torch.nn.Module, Any]],
               num_classes: int) -> Field:
    """The method's Field from its parts, wrapped by the configured guidance (which gets every part)."""
    method_roles = set(method.units())
    field = method.assemble({r: p for r, p in parts.items() if r in method_roles})
    return build_guidance(cfg).wrap(field, parts, num_classes)


def assemble(cfg: Mapping[str, Any], method: Optional[Method] = None, *,
             device: str | torch.device = "cpu") -> tuple[Field, dict[str, Any]]:
    """The (guided) Field from the finished units' EMA weights on ``device``, and the units' completion records.

    ``eval.ema_std`` picks the power-function EMA profile (reconstructed post hoc when it was not tracked), so
    EMA length is a sampling-time choice.
    """
    from harness.train import load_unit_field_parts

    method = method or method_for(cfg)
    workdir = Path(cfg["paths"]["workdir"])
    parts, records = {}, {}
    for role, spec in experiment_units(cfg, method).items():
        model, objective, record = load_unit_field_parts(spec, workdir, device=str(device),
                                                         ema_std=cfg["eval"].get("ema_std"))
        parts[role] = (model, objective)
        records[role] = record
    num_classes = field_classes(parts, {r: rec["num_classes"] for r, rec in records.items()})
    return wrap_parts(cfg, method, parts, num_classes), records


def unit_input(cfg: Mapping[str, Any], spec, in_shape: Sequence[int], num_classes: int) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) a unit's network is built for: the run's, or its own data node's when the unit
    trains on derived data (a DDM router: the k cluster ids as classes)."""
    if spec.data == cfg["data"]:
        return tuple(in_shape), num_classes
    from harness.data.shapes import data_shape

    shape, classes, _ = data_shape(spec.data)
    return tuple(shape), int(classes)


def assemble_meta(cfg: Mapping[str, Any], in_shape: Sequence[int], num_classes: int,
                  method: Optional[Method] = None) -> tuple[Field, Callable]:
    """The configured (guided) Field with every network on the meta device (shapes only), and its sampler.

    Counts a full-scale config (SiT-XL/2 on ImageNet latents) here without weights or data.
    ``method``: an already prepared method; by default the config's, unprepared (its stand-in).
    """
    from harness.evaluate.pipeline import build_sampler

    method = (method or method_for(cfg, prepare=False)).stand_in()
    parts = {}
    with torch.device("meta"):
        for role, spec in experiment_units(cfg, method).items():
            shape, classes = unit_input(cfg, spec, in_shape, num_classes)
            parts[role] = (build_backbone(spec.backbone, shape, classes).eval(), build_objective(spec.objective))
    return wrap_parts(cfg, method, parts, num_classes), build_sampler(cfg)
