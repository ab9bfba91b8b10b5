"""The per-item shape and class count of a data node, without loading the data where it is absent.

Full-scale configs (SiT-XL/2 on ImageNet latents) are counted and validated on machines that do
not hold their data: the shape then comes from the dataset's nominal shape (the ImageNet latents
are 4x32x32 with 1000 classes in SiT/DiT), else from loading the dataset.  Latent shards written by
``harness encode`` say their shape in their metadata, which is read instead of the nominal shape
when they are present (a tiny VAE's 4x16x16 latents, a 512x512 encoding's 4x64x64).
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.core.errors import HarnessError

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
    if name == "captioned":                       # rows + caption shards: the rows' shape and classes
        return data_shape(node["base"])
    if name == "cluster_subset":                  # one cluster (or all) of the base data, relabelled
        shape, classes, source = data_shape(node["base"])
        labels = node.get("labels", "none")
        if labels == "cluster" and node.get("k") is not None:
            return shape, int(node["k"]), source
        if labels == "none":
            return shape, 0, source
        if labels == "base":
            return shape, classes, source
    if name == "image_folder":                    # counting needs no images: ImageNet-style folders assumed
        side = int(node.get("resolution") or node.get("image_size") or 32)
        return (int(node.get("channels") or 3), side, side), 1000, "nominal (image_folder: 1000 classes assumed)"
    if name == "latent_shards":                   # the shape of the latents (what the backbone sees), not of the images
        from harness.data.latents import peek_shards

        shape, classes = NOMINAL[name]
        peeked = peek_shards(node["root"], node.get("pattern") or "*.npz") if node.get("root") else None
        if peeked is not None:
            shape, classes = peeked
        if node.get("num_classes") is not None:
            classes = int(node["num_classes"])
        return shape, classes, "shard metadata" if peeked is not None else "nominal"
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
