"""Images -> VAE latent shards in the format :func:`harness.data.latents.latent_shards` reads (``harness encode``).

Why here: DiT/SiT train on SD-VAE latents extracted once (fast-DiT's ``extract_features.py``); doing
it inside the harness records what the latents are (the VAE's identity and hash, scale factor, posterior
mode, the source data node and its hash) in every shard, so ``latent_shards`` can refuse latents that do
not belong together and evaluation can decode samples with the right VAE.

The source is a ``data`` node: an ``image_folder`` is read one shard at a time (ImageNet does not fit
in memory as float32 images; use ``data.image_size`` / ``data.mode``, as ``resolution``/``channels``
would need every image at once), any other image dataset (CIFAR-10, Fashion-MNIST with
``data.resolution=32 data.channels=3``) is built whole with :func:`~harness.data.base.build_dataset`.
Shard ``k`` holds items ``[k * shard_size, (k + 1) * shard_size)`` as ``shard_<k:05d>.npz``
(uncompressed, so it is memory-mapped on read), written atomically (temp file, fsync, rename).  A
re-run of the same command skips the shards already written; a directory holding another encoding
is refused rather than mixed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from harness.core.errors import ConfigError, DataError
from harness.core.files import write_atomic
from harness.core.hashing import content_hash
from harness.data.base import GENERIC_KEYS, build_dataset, factory_signature, file_record
from harness.data.latents import FORMAT, read_meta
from harness.data.vae import VAE

DTYPES = ("float32", "float16")


@dataclasses.dataclass
class ImageSource:
    """What encoding reads: ``n`` labelled images of one shape, by index range."""

    node: dict[str, Any]
    info: dict[str, Any]
    labels: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int, int]
    read: Callable[[int, int], torch.Tensor]  # (start, stop) -> images uint8 or float [-1, 1]

    @property
    def sha256(self) -> str:
        """Hash of the node and of what its loader records about the files (their SHA-256, or the file list)."""
        return content_hash({"node": self.node, "info": self.info}, length=64)


def folder_source(node: Mapping[str, Any]) -> ImageSource:
    """An ``image_folder`` node read lazily with the loader's own listing and image reader."""
    from harness.data.image_folder import image_folder, list_images, load_image

    params, _ = factory_signature(image_folder)
    args = {k: node.get(k, p.default) for k, p in params.items() if k not in GENERIC_KEYS}
    for key in ("resolution", "channels"):
        if node.get(key) is not None:
            raise ConfigError(f"data.{key}: harness encode reads image folders one shard at a time and cannot apply it",
                              hint="set data.image_size and data.mode=RGB instead")
    if float(node.get("subset_fraction", 1.0)) != 1.0:
        raise ConfigError("data.subset_fraction: harness encode encodes a whole image folder", hint="use data.limit=N")
    root = Path(args["root"]).expanduser()
    items, classes = list_images(root)
    if args["limit"] is not None:
        items = items[: int(args["limit"])]
    listing = hashlib.sha256("\n".join(str(p.relative_to(root)) for p, _ in items).encode()).hexdigest()
    size, mode, crop = int(args["image_size"]), str(args["mode"]), bool(args["center_crop"])
    info = {"source": "image folder", "root": str(root), "classes": classes, "n_files": len(items),
            "file_list_sha256": listing, "image_size": size, "mode": mode, "center_crop": crop}
    if args["hash_files"]:
        info["files"] = file_record([p for p, _ in items])
    first = load_image(items[0][0], size, mode, crop)

    def read(start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([load_image(p, size, mode, crop) for p, _ in items[start:stop]]))

    return ImageSource(dict(node), info, torch.tensor([label for _, label in items], dtype=torch.long), len(classes),
                       tuple(first.shape), read)


def image_source(node: Mapping[str, Any]) -> ImageSource:
    """The images a data node describes (see the module docstring)."""
    node = dict(node)
    if node.get("name") == "image_folder":
        return folder_source(node)
    ds = build_dataset(node)
    if ds.kind != "image":
        raise ConfigError(f"data={node['name']} holds {ds.kind} data: harness encode encodes images",
                          hint="use an image dataset (image_folder, cifar10, fashion_mnist with data.channels=3)")
    return ImageSource(node, ds.info, ds.y, ds.num_classes, ds.shape,
                       lambda start, stop: ds.get_batch(torch.arange(start, stop))[0])


def existing_shards(out: Path, key: str) -> set[int]:
    """Indices of the shards of encoding ``key`` already in ``out``; a shard of another encoding is an error."""
    done = set()
    for path in sorted(out.glob("shard_*.npz")):
        meta = read_meta(path)
        if meta is None or meta["key"] != key:
            raise DataError(f"{path} belongs to another encoding (other VAE, source or options)",
                            hint="write to a new --out directory, or remove the old shards")
        done.add(int(meta["shard"]))
    return done


def encode_to_shards(node: Mapping[str, Any], vae: VAE, out: Path, *, shard_size: int = 10_000, batch_size: int = 64,
                     posterior: str = "sample", seed: int = 0, dtype: str = "float32") -> dict[str, Any]:
    """Encode the images of ``node`` into ``out/shard_*.npz``; returns what was written and skipped."""
    if shard_size < 1 or batch_size < 1:
        raise ConfigError(f"--shard-size and --batch-size must be >= 1, got {shard_size} and {batch_size}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = image_source(node)
    n = len(source.labels)
    if n == 0:
        raise DataError(f"data={source.node['name']} holds no images to encode")
    latent_shape = vae.identity.latent_shape(source.image_shape)
    ident = vae.identity.to_dict()
    encoding = {  # everything the latents depend on; the VAE by hash, not by where it lies
        "vae_sha256": ident["sha256"], "scale_factor": ident["scale_factor"], "posterior": {"mode": posterior, "seed": seed},
        "precision": vae.precision, "dtype": dtype, "latent_shape": list(latent_shape),
        "image_shape": list(source.image_shape), "num_classes": source.num_classes,
        "source_sha256": source.sha256, "n": n, "shard_size": shard_size}
    key = content_hash(encoding, length=64)
    n_shards = -(-n // shard_size)
    out = Path(out).expanduser()
    done = existing_shards(out, key) if out.is_dir() else set()
    written, skipped = [], []
    for k in range(n_shards):
        path = out / f"shard_{k:05d}.npz"
        if k in done:
            skipped.append(path.name)
            continue
        start, stop = k * shard_size, min(n, (k + 1) * shard_size)
        latents = vae.encode(source.read(start, stop), posterior=posterior, seed=seed, first_index=start,
                             batch_size=batch_size)
        meta = {"format": FORMAT, "key": key, "shard": k, "n_shards": n_shards, "start": start, "count": stop - start,
                "total": n, "latent_shape": list(latent_shape), "dtype": dtype, "image_shape": list(source.image_shape),
                "num_classes": source.num_classes, "prescaled": True, "scale_factor": ident["scale_factor"],
                "vae": ident, "posterior": {"mode": posterior, "seed": seed}, "precision": vae.precision,
                "device": str(vae.device), "source": {"node": source.node, "sha256": source.sha256, "n": n}}
        arrays = {"latents": latents.numpy().astype(dtype), "labels": source.labels[start:stop].numpy(),
                  "meta": np.array(json.dumps(meta, sort_keys=True, default=str))}
        write_atomic(path, lambda f: np.savez(f, **arrays))
        written.append(path.name)
    return {"out": str(out), "key": key, "n": n, "shards": n_shards, "written": written, "skipped": skipped,
            "latent_shape": list(latent_shape), "image_shape": list(source.image_shape), "vae_sha256": ident["sha256"]}
