"""Samples -> the uint8 images image metrics score, and the reference check that goes with decoding.

Why one place: FID and its kin are defined on images.  Pixel-space samples are rounded to uint8
(EDM/ADM), latent samples (SiT/DiT on SD-VAE latents) are first decoded by the VAE that encoded the
training latents (``dataset.decoder``, DiT's ``vae.decode(z / 0.18215)``), and vectors are no images at
all.  A decoded sample set is compared with real images at the decoded resolution: an ADM reference
batch (``eval.reference``, e.g. ``VIRTUAL_imagenet256_labeled.npz``), never the training latents.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from harness.core.errors import ConfigError, DataError
from harness.data.base import ArrayDataset


def to_metric_images(samples: torch.Tensor, dataset: ArrayDataset) -> torch.Tensor:
    """uint8 images (N, C, H, W) of ``samples`` drawn in ``dataset``'s space.

    uint8 input is already images (a sample npz) and passes through; latents are decoded with
    ``dataset.decoder`` (batched, images in [-1, 1]); [-1, 1] floats are rounded as ``harness.sample.to_uint8``.
    """
    from harness.sample import to_uint8

    if samples.dtype == torch.uint8:
        return samples
    if dataset.kind == "vector":
        raise DataError(f"{dataset.name} holds vectors, not images, so image metrics cannot score its samples",
                        hint="use eval=fd_raw for vector data")
    return to_uint8(dataset.decoder(samples) if dataset.kind == "latent" else samples)


def metric_image_shape(dataset: ArrayDataset) -> tuple[int, ...] | None:
    """(C, H, W) of the images :func:`to_metric_images` makes from the dataset's samples."""
    if dataset.kind == "latent":
        return dataset.image_shape
    return None if dataset.kind == "vector" else tuple(dataset.shape)


def check_metric_reference(ev: Mapping[str, Any], dataset: ArrayDataset) -> None:
    """Before sampling: decoded latents need an ADM reference batch, and a reference batch the samples' resolution."""
    from harness.evaluate.adm import adm_image_shape

    if not ev["metrics"]:
        return
    if dataset.kind == "latent":
        if not ev.get("reference"):
            raise ConfigError("eval.reference: metrics on decoded latents need an ADM reference batch of real images "
                              "(the training latents are no reference)",
                              hint="set eval.reference=PATH.npz, e.g. ADM's VIRTUAL_imagenet256_labeled.npz for ImageNet-256")
        dataset.decoder.check()  # the VAE is here and is the one that encoded the shards
    check_reference_npz(ev)
    shape = metric_image_shape(dataset)
    ref = adm_image_shape(Path(ev["reference"])) if ev.get("reference") and shape is not None else None
    if ref is not None and tuple(ref[:2]) != tuple(shape[1:]):
        what = "decoded samples" if dataset.kind == "latent" else "samples"
        raise DataError(f"{ev['reference']}: reference images are {ref[0]}x{ref[1]} but the {what} are {shape[1]}x{shape[2]}",
                        hint="use a reference batch at the samples' resolution (eval.reference)")


def check_reference_npz(ev: Mapping[str, Any]) -> None:
    """Before sampling: an ADM-suite reference npz holds what each asked metric reads (e.g. sFID: arr_0 or mu_s)."""
    from harness.evaluate.adm import adm_npz_keys
    from harness.evaluate.adm_suite import needed_npz_keys

    if ev.get("extractor") != "adm_inception" or not ev.get("reference"):
        return
    held = adm_npz_keys(Path(ev["reference"]))
    for metric, keys in needed_npz_keys(ev["metrics"]):
        if not held & set(keys):
            raise DataError(f"{ev['reference']}: metric {metric} needs {' or '.join(keys)} but the npz holds "
                            f"{', '.join(sorted(held)) or 'nothing'}",
                            hint="use ADM's full reference batch (e.g. VIRTUAL_imagenet256_labeled.npz) or drop the metric")


def image_protocol(dataset: ArrayDataset) -> dict[str, Any]:
    """What turned samples into the scored images, for ``protocol.json`` (the VAE's path, hash and scale)."""
    if dataset.kind != "latent":
        return {}
    shape = dataset.image_shape
    return {**dataset.decoder.identity(), "metric_image_shape": "x".join(map(str, shape)) if shape else None}
