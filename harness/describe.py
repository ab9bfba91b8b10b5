"""Params and GFLOPs of an experiment's units, counted from shapes only (no data, no weights).

Full-scale configs (SiT-XL/2 on ImageNet latents) cannot run here, but their size and
per-forward cost can be counted on the ``meta`` device with FlopCounterMode, so a user checks
a cluster config on a laptop.  Data shapes come from the dataset when it loads, and from its
nominal shape otherwise (the ImageNet latents are 4x32x32 with 1000 classes in SiT/DiT).
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.errors import HarnessError

# name -> (per-item shape, classes) for datasets that may be absent on this machine
NOMINAL = {
    "latent_shards": ((4, 32, 32), 1000),
    "cifar10": ((3, 32, 32), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
}


def data_shape(node: Mapping[str, Any]) -> tuple[tuple[int, ...], int, str]:
    """(shape, num_classes, source) of a data node after its resolution/channels transforms."""
    name = node["name"]
    if name == "unlabelled":                      # the base data's shape, without classes
        shape, _, source = data_shape(node["base"])
        return shape, 0, source
    if name == "image_folder":                    # counting needs no images: ImageNet-style folders assumed
        side = int(node.get("resolution") or node.get("image_size") or 32)
        return (int(node.get("channels") or 3), side, side), 1000, "nominal (image_folder: 1000 classes assumed)"
    if name in NOMINAL:
        shape, classes = NOMINAL[name]
        c, h, w = shape
        if node.get("channels"):
            c = int(node["channels"])
        if node.get("resolution"):
            h = w = int(node["resolution"])
        return (c, h, w), classes, "nominal"
    from harness.data.base import build_dataset

    try:
        ds = build_dataset(dict(node))
    except HarnessError as err:
        raise HarnessError(f"cannot determine the data shape of {name}: {err.one_line()}") from None
    return tuple(ds.shape), ds.num_classes, "loaded"


def describe_experiment(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Per-unit params, GFLOPs (2 per multiply-add) and GMACs per single-item forward."""
    from harness.backbones.flops import describe
    from harness.experiment import method_for
    from harness.units import build_backbone

    shape, classes, source = data_shape(cfg["data"])
    rows = {}
    method = method_for(cfg, prepare=False)  # no aux training just to count FLOPs
    note = None
    if getattr(method, "boundaries", []) is None:  # boundaries come from training (CBS): sizes do not depend on them
        method.boundaries = [i / method.n for i in range(1, method.n)]
        note = "intervals are placeholders: CBS boundaries come from the aux model (harness split)"
    from harness.guidance import build_guidance

    guidance = build_guidance(cfg)
    for role, spec in {**method.units(), **guidance.units()}.items():
        stats = describe(lambda spec=spec: build_backbone(spec.backbone, shape, classes), shape)
        rows[role] = {"hash": spec.hash, "interval": list(spec.interval), "steps": spec.train["steps"], **stats}
    guided = None
    if guidance.registered_name != "none":  # seed 004 Tab. 2: cost of the guided sampler, counted on meta
        from harness.guidance_cost import config_cost

        guided = {**guidance.describe(), **config_cost(cfg)}
        line = (f"guidance {guided['guidance']}: {guided['gflops_per_nfe_seed004']:.2f} GFLOPs/NFE, "
                f"{guided['gflops_per_image_seed004']:.1f} per image over {guided['nfe']} NFE (seed 004 convention: "
                f"linear/conv multiply-adds); torch's 2-per-MAC count with attention: {guided['gflops_per_nfe_torch']:.2f}")
        note = f"{note}; {line}" if note else line
    return {"data_shape": list(shape), "num_classes": classes, "shape_source": source, "units": rows, "note": note,
            "guidance": guided}
