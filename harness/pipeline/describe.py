"""Params and GFLOPs of an experiment's units, counted from shapes only (no data, no weights).

Full-scale configs (SiT-XL/2 on ImageNet latents) cannot run here, but their size and
per-forward cost can be counted on the ``meta`` device with FlopCounterMode, so a user checks
a cluster config on a laptop.  Data shapes come from the dataset when it loads, and from its
nominal shape otherwise (:mod:`harness.data.shapes`).  A unit with ``backbone.init_from`` is
counted the same way and its checkpoint checked against the config from the file's shapes
(memory-mapped, no weight read; :func:`harness.backbones.dit_import.check_official`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from harness.api.guidance import build_guidance
from harness.backbones.build import build_backbone
from harness.backbones.dit_import import check_official
from harness.backbones.dit_transfer import check_transfer
from harness.backbones.size import describe
from harness.data.shapes import data_shape
from harness.pipeline.assemble import experiment_units, method_for, unit_input
from harness.pipeline.cost import config_cost


def describe_experiment(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Per-unit params, GFLOPs (2 per multiply-add) and GMACs per single-item forward."""
    shape, classes, source = data_shape(cfg["data"])
    rows = {}
    method = method_for(cfg, prepare=False)  # no aux training just to count FLOPs
    note = None
    if method.needs_prepare():  # sizes do not depend on what prepare() decides (CBS: the boundaries)
        note = (f"intervals are placeholders: method={cfg['method']['name']} decides its units when it is prepared "
                "(before training; sizes do not depend on it)")
    counted = method.stand_in()
    guidance = build_guidance(cfg)
    imported = []
    for role, spec in experiment_units(cfg, counted).items():
        unit_shape, unit_classes = unit_input(cfg, spec, shape, classes)
        build = lambda spec=spec, s=unit_shape, k=unit_classes: build_backbone(spec.backbone, s, k)  # noqa: E731
        stats = describe(build, unit_shape)
        rows[role] = {"hash": spec.hash, "interval": list(spec.interval), "steps": spec.train["steps"], **stats}
        if spec.backbone.get("init_from") is not None:  # released weights: checked against the config from shapes
            with torch.device("meta"):
                model = build()
            if spec.backbone.get("init_transfer") is not None:   # seed 003 Eq. 20: what is taken, renewed, dropped
                transferred = check_transfer(model, spec.backbone["init_from"])
                rows[role]["init_from"] = transferred.to_dict()
                imported.append(f"{role}: {transferred.line()}")
                continue
            record = check_official(model, spec.backbone["init_from"])   # shapes only: nothing is loaded
            rows[role]["init_from"] = record.to_dict()
            imported.append(f"{role} imported from {record.path} ({record.entry}{''.join('; ' + n for n in record.notes)})")
    guided = None
    if guidance.active:  # seed 004 Tab. 2: cost of the guided sampler, counted on meta
        guided = {**guidance.describe(), **config_cost(cfg)}
        line = (f"guidance {guided['guidance']}: {guided['gflops_per_nfe_seed004']:.2f} GFLOPs/NFE, "
                f"{guided['gflops_per_image_seed004']:.1f} per image over {guided['nfe']} NFE (seed 004 convention: "
                f"linear/conv multiply-adds); torch's 2-per-MAC count with attention: {guided['gflops_per_nfe_torch']:.2f}")
        note = f"{note}; {line}" if note else line
    note = "; ".join([*([note] if note else []), *imported]) or None
    return {"data_shape": list(shape), "num_classes": classes, "shape_source": source, "units": rows, "note": note,
            "guidance": guided}
