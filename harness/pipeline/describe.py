"""Params and GFLOPs of an experiment's units, counted from shapes only (no data, no weights).

Full-scale configs (SiT-XL/2 on ImageNet latents) cannot run here, but their size and
per-forward cost can be counted on the ``meta`` device with FlopCounterMode, so a user checks
a cluster config on a laptop.  Data shapes come from the dataset when it loads, and from its
nominal shape otherwise (:mod:`harness.data.shapes`).
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.api.guidance import build_guidance
from harness.backbones.build import build_backbone
from harness.backbones.size import describe
from harness.data.shapes import data_shape
from harness.pipeline.assemble import experiment_units, method_for
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
    for role, spec in experiment_units(cfg, counted).items():
        stats = describe(lambda spec=spec: build_backbone(spec.backbone, shape, classes), shape)
        rows[role] = {"hash": spec.hash, "interval": list(spec.interval), "steps": spec.train["steps"], **stats}
    guided = None
    if guidance.active:  # seed 004 Tab. 2: cost of the guided sampler, counted on meta
        guided = {**guidance.describe(), **config_cost(cfg)}
        line = (f"guidance {guided['guidance']}: {guided['gflops_per_nfe_seed004']:.2f} GFLOPs/NFE, "
                f"{guided['gflops_per_image_seed004']:.1f} per image over {guided['nfe']} NFE (seed 004 convention: "
                f"linear/conv multiply-adds); torch's 2-per-MAC count with attention: {guided['gflops_per_nfe_torch']:.2f}")
        note = f"{note}; {line}" if note else line
    return {"data_shape": list(shape), "num_classes": classes, "shape_source": source, "units": rows, "note": note,
            "guidance": guided}
