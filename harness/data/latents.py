"""Precomputed SD-VAE latents of ImageNet-256 (the SiT / DiT / DiffMoE setting) in ``.npz`` shards.

Why this format: the papers train on ``vae.encode(x).latent_dist.sample() * 0.18215``
(4x32x32 per 256x256 image), extracted once (fast-DiT's ``extract_features.py``).  1.28 M
such latents are ~21 GB in float32, more than this machine's memory, so shards are read
lazily: an uncompressed ``np.savez`` member is memory-mapped in place (the zip entry of a
stored ``.npy`` is its raw bytes), a compressed one is loaded when first needed.  Labels
(8 bytes per image) are read eagerly.

A shard holds ``latents`` float (n, 4, 32, 32) (float16 is fine; rows come out float32) and
``labels`` int (n,).  Shards are taken in sorted file-name order.  ``prescaled`` says the
files already hold ``latent * scale_factor`` (as fast-DiT writes them); otherwise rows are
multiplied on read.  :func:`decode_latents` turns latents back into images with a local
diffusers ``AutoencoderKL``; nothing is ever downloaded.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.files import sha256_file
from harness.data.base import ArrayDataset, RowSource
from harness.core.errors import ConfigError, DataError
from harness.core.registry import register

SCALE_FACTOR = 0.18215  # SD-VAE (stabilityai/sd-vae-ft-*) latent scale used by LDM/DiT/SiT
FORMAT_HINT = "each shard must be an .npz with 'latents' (n, 4, 32, 32) and 'labels' (n,)"


def npz_member(path: Path, key: str) -> np.ndarray:
    """``np.load(path)[key]``, but memory-mapped (copy-on-write) when the member is stored uncompressed."""
    member = f"{key}.npy"
    with zipfile.ZipFile(path) as zf:
        if member not in zf.namelist():
            raise DataError(f"{path}: no array {key!r} (has {[n[:-4] for n in zf.namelist()]})", hint=FORMAT_HINT)
        zinfo = zf.getinfo(member)
    if zinfo.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(zinfo.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            f.seek(zinfo.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            header = readers[version](f) if version in readers else None
            offset = f.tell()
        if header is not None and not header[2].hasobject:
            shape, fortran, dtype = header
            return np.memmap(path, dtype=dtype, mode="c", shape=shape, order="F" if fortran else "C", offset=offset)
    with np.load(path, allow_pickle=False) as data:
        return data[key]


class ShardRows(RowSource):
    """Rows spread over several arrays (one per shard), addressed by a global index view."""

    def __init__(self, arrays: list[np.ndarray], *, scale: float = 1.0, index: torch.Tensor | None = None) -> None:
        self.arrays = arrays
        self.scale = float(scale)
        sizes = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.total = int(sizes.sum())
        self.index = index

    def __len__(self) -> int:
        return self.total if self.index is None else int(self.index.numel())

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.arrays[0].shape[1:])

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        glob = idx if self.index is None else self.index[idx]
        shard = torch.searchsorted(self.starts, glob, right=True) - 1
        out = torch.empty((glob.numel(), *self.row_shape), dtype=torch.float32)
        for s in shard.unique().tolist():
            pos = (shard == s).nonzero().reshape(-1)
            local = (glob[pos] - self.starts[s]).numpy()
            out[pos] = torch.from_numpy(np.asarray(self.arrays[s][local], dtype=np.float32))
        return out.mul_(self.scale) if self.scale != 1.0 else out

    def select(self, idx: torch.Tensor) -> "ShardRows":
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return ShardRows(self.arrays, scale=self.scale, index=idx if self.index is None else self.index[idx])


@register("dataset", "latent_shards")
def latent_shards(*, root: str, limit: int | None = None, scale_factor: float = SCALE_FACTOR,
                  prescaled: bool = True, num_classes: int = 1000, pattern: str = "*.npz",
                  hash_files: bool = False) -> ArrayDataset:
    """All shards matching ``pattern`` in ``root`` as a lazily read (N, 4, 32, 32) latent dataset."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"latent shard directory {base} does not exist",
                        hint="set data.root to a directory of .npz shards (extract them with an SD-VAE elsewhere)")
    files = sorted(base.glob(pattern))
    if not files:
        raise DataError(f"no shards matching {pattern!r} in {base}", hint=FORMAT_HINT)
    arrays, labels, taken = [], [], 0
    for path in files:
        if limit is not None and taken >= int(limit):
            break
        try:
            lat, lab = npz_member(path, "latents"), npz_member(path, "labels")
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise DataError(f"cannot read latent shard {path}: {err}", hint=FORMAT_HINT) from None
        if lat.ndim != 4 or lab.ndim != 1 or lat.shape[0] != lab.shape[0]:
            raise DataError(f"{path}: latents {lat.shape} / labels {lab.shape} do not match", hint=FORMAT_HINT)
        if arrays and lat.shape[1:] != arrays[0].shape[1:]:
            raise DataError(f"{path}: latents of shape {lat.shape[1:]} but {files[0].name} has {arrays[0].shape[1:]}")
        if not np.issubdtype(lat.dtype, np.floating) or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{path}: latents {lat.dtype} / labels {lab.dtype}: expected float / int", hint=FORMAT_HINT)
        arrays.append(lat)
        labels.append(np.asarray(lab, dtype=np.int64))
        taken += lat.shape[0]
    y = torch.from_numpy(np.concatenate(labels))
    if num_classes > 0 and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"latent labels span [{int(y.min())}, {int(y.max())}], outside data.num_classes={num_classes}",
                        hint="set data.num_classes to the number of classes (ImageNet: 1000)")
    if scale_factor <= 0:
        raise ConfigError(f"data.scale_factor must be > 0, got {scale_factor}")
    used = files[: len(arrays)]
    info: dict[str, Any] = {"source": "SD-VAE latent shards (.npz)", "root": str(base),
                            "shards": [p.name for p in used], "scale_factor": float(scale_factor),
                            "prescaled": bool(prescaled), "license": "ImageNet terms of access (non-commercial research)"}
    if hash_files:
        info["files"] = {str(p): sha256_file(p, memo=True) for p in used}
    rows = ShardRows(arrays, scale=1.0 if prescaled else scale_factor)
    ds = ArrayDataset(rows, y, num_classes=num_classes, name="latent_shards", kind="latent", info=info)
    return ds.head(int(limit)) if limit is not None else ds


def decode_latents(latents: torch.Tensor, vae_path: str | Path | None = None, *,
                   scale_factor: float = SCALE_FACTOR, device: str = "cpu", batch_size: int = 16) -> torch.Tensor:
    """Scaled latents (N, 4, h, w) -> images float32 [-1, 1] (N, 3, 8h, 8w) with a local SD-VAE.

    ``vae_path`` is a directory written by diffusers' ``AutoencoderKL.save_pretrained``
    (e.g. a copy of stabilityai/sd-vae-ft-ema).  Loaded with ``local_files_only=True``:
    this function never downloads, and says so when it cannot decode.
    """
    hint = ("latents are decoded with an SD-VAE, which cannot be downloaded here: copy a diffusers "
            "AutoencoderKL directory (e.g. stabilityai/sd-vae-ft-ema) to this machine and pass vae_path=DIR")
    if vae_path is None:
        raise DataError("cannot decode latents: no VAE given (vae_path=None)", hint=hint)
    path = Path(vae_path).expanduser()
    if not path.exists():
        raise DataError(f"cannot decode latents: VAE directory {path} does not exist", hint=hint)
    try:
        from diffusers.models import AutoencoderKL
    except ImportError:
        raise DataError("cannot decode latents: the diffusers package is not installed",
                        hint="pip install diffusers (the VAE weights must still be local)") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).to(device).eval()
    except Exception as err:  # wrong directory, missing weights file, ...
        raise DataError(f"cannot load a diffusers AutoencoderKL from {path}: {type(err).__name__}: {err}",
                        hint=hint) from None
    out = []
    with torch.no_grad():
        for chunk in torch.as_tensor(latents, dtype=torch.float32).split(batch_size):
            out.append(vae.decode(chunk.to(device) / scale_factor).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)
