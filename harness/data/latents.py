"""Precomputed SD-VAE latents of ImageNet-256 (the SiT / DiT / DiffMoE setting) in ``.npz`` shards.

Why this format: the papers train on ``vae.encode(x).latent_dist.sample() * 0.18215``
(4x32x32 per 256x256 image), extracted once (fast-DiT's ``extract_features.py``; here
``harness encode``).  1.28 M such latents are ~21 GB in float32, more than this machine's
memory, so shards are read lazily: an uncompressed ``np.savez`` member is memory-mapped in
place (the zip entry of a stored ``.npy`` is its raw bytes), a compressed one is loaded when
first needed.  Labels (8 bytes per image) are read eagerly.

A shard holds ``latents`` float (n, C, h, w) (float16 is fine; rows come out float32) and
``labels`` int (n,).  Shards are taken in sorted file-name order.  ``prescaled`` says the
files already hold ``latent * scale_factor`` (as fast-DiT writes them); otherwise rows are
multiplied on read.

Shards written by ``harness encode`` also hold ``meta`` (:data:`FORMAT`, JSON): the VAE's
identity and SHA-256, scale factor, latent shape and dtype, image shape, the source data node
and its hash, and which slice of the encoding the shard is.  Loading checks it (one VAE and one
encoding per directory, no shard missing, arrays as the metadata says, ``data.vae`` and
``data.scale_factor`` agree with it), and the dataset carries ``decoder`` (latents -> images in
[-1, 1], its VAE loaded on first use) and ``image_shape`` so evaluation scores decoded images.
Shards without metadata (fast-DiT's) load as before; decoding them needs ``data.vae``.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.files import sha256_file
from harness.data.base import ArrayDataset, RowSource
from harness.data.vae import SD_VAE_SCALE, LatentDecoder, VAEIdentity
from harness.core.errors import ConfigError, DataError
from harness.core.registry import register

FORMAT = "harness-latent-shards/1"  # the ``meta`` member harness encode writes (harness.data.encode)
FORMAT_HINT = "each shard must be an .npz with 'latents' (n, C, h, w) and 'labels' (n,)"
ONE_ENCODING = "keep the shards of one harness encode run (one VAE, one source) per directory"


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


def read_meta(path: Path) -> dict[str, Any] | None:
    """The ``meta`` JSON of a shard written by harness encode, or ``None`` (fast-DiT shards have none)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if "meta.npy" not in zf.namelist():
                return None
            with zf.open("meta.npy") as f:
                text = str(np.lib.format.read_array(f, allow_pickle=False))
        meta = json.loads(text)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"cannot read the metadata of latent shard {path}: {err}", hint=FORMAT_HINT) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: metadata is not {FORMAT}", hint="re-encode the images with harness encode")
    return meta


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


def check_encoding(base: Path, files: list[Path], metas: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The metadata of the first shard, after checking that every shard is one slice of the same encoding."""
    if all(m is None for m in metas):
        return None
    first = next(i for i, m in enumerate(metas) if m is not None)
    ref = metas[first]
    for path, meta in zip(files, metas):
        if meta is None:
            raise DataError(f"{path}: no harness encode metadata, unlike {files[first].name}", hint=ONE_ENCODING)
        if meta["vae"]["sha256"] != ref["vae"]["sha256"]:
            raise DataError(f"{path}: encoded with VAE {meta['vae']['sha256'][:12]} ({meta['vae']['path']}) but "
                            f"{files[first].name} with VAE {ref['vae']['sha256'][:12]} ({ref['vae']['path']})", hint=ONE_ENCODING)
        if meta["key"] != ref["key"]:
            raise DataError(f"{path}: another encoding than {files[first].name} (source, posterior or dtype differ)",
                            hint=ONE_ENCODING)
    present = sorted(m["shard"] for m in metas)
    missing = sorted(set(range(int(ref["n_shards"]))) - set(present))
    if missing or len(present) != int(ref["n_shards"]):
        raise DataError(f"{base}: {len(present)} shard file(s) for {ref['n_shards']} shards of one encoding"
                        + (f" (shard {missing[0]} is missing)" if missing else " (a shard appears twice)"),
                        hint="finish the encoding by re-running the same harness encode command (finished shards are "
                             "skipped), and keep one copy of each shard")
    return ref


def check_shard(path: Path, latents: np.ndarray, meta: dict[str, Any] | None) -> None:
    """A shard's arrays are what its metadata says (shape, dtype, count)."""
    if meta is None:
        return
    said = (str(meta["dtype"]), tuple(meta["latent_shape"]), int(meta["count"]))
    found = (str(latents.dtype), tuple(latents.shape[1:]), int(latents.shape[0]))
    if said != found:
        raise DataError(f"{path}: latents are {found[0]} {found[1]} x {found[2]} but its metadata says "
                        f"{said[0]} {said[1]} x {said[2]}",
                        hint="the file was changed after harness encode wrote it: re-encode it with harness encode")


def given_vae(vae: str, scale: float, meta: dict[str, Any] | None, shard: Path, shape: tuple[int, ...]) -> VAEIdentity:
    """``data.vae``'s identity, checked against the VAE recorded in the shards (or their latent shape)."""
    try:
        identity = VAEIdentity.of(vae, scale)
    except DataError as err:
        raise ConfigError(f"data.vae: {err.message}", hint=err.hint) from None
    if meta is not None and identity.sha256 != meta["vae"]["sha256"]:
        raise ConfigError(f"data.vae: {identity.path} has SHA-256 {identity.sha256[:12]} but {shard} was encoded with "
                          f"VAE {meta['vae']['sha256'][:12]} ({meta['vae']['path']})",
                          hint="point data.vae at the VAE that encoded the shards, or re-encode them with harness encode --vae DIR")
    if meta is None:
        identity.image_shape(shape)  # its latent channels match the shards'
    return identity


@register("dataset", "latent_shards")
def latent_shards(*, root: str, limit: int | None = None, vae: str | None = None, scale_factor: float | None = None,
                  prescaled: bool = True, num_classes: int | None = None, pattern: str = "*.npz",
                  hash_files: bool = False) -> ArrayDataset:
    """All shards matching ``pattern`` in ``root`` as a lazily read (N, C, h, w) latent dataset.

    ``vae``: the diffusers AutoencoderKL directory that decodes them (default: the one recorded in the
    shards; when both exist their hashes must agree).  ``scale_factor`` / ``num_classes``: default to
    the shards' metadata, else SD-VAE's 0.18215 and ImageNet's 1000 classes.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"latent shard directory {base} does not exist",
                        hint="set data.root to a directory of .npz shards (write them with harness encode)")
    files = sorted(base.glob(pattern))
    if not files:
        raise DataError(f"no shards matching {pattern!r} in {base}", hint=FORMAT_HINT)
    metas = [read_meta(p) for p in files]
    encoding = check_encoding(base, files, metas)
    if encoding is not None and scale_factor is not None and float(scale_factor) != float(encoding["scale_factor"]):
        raise ConfigError(f"data.scale_factor={scale_factor} but {base} was encoded with scale {encoding['scale_factor']}",
                          hint="drop data.scale_factor: the shards' value is used")
    if encoding is not None and not prescaled:
        raise ConfigError(f"data.prescaled=false but harness encode stored scaled latents (z * scale) in {base}",
                          hint="drop data.prescaled")
    scale = float(encoding["scale_factor"] if encoding is not None else SD_VAE_SCALE if scale_factor is None else scale_factor)
    if scale <= 0:
        raise ConfigError(f"data.scale_factor must be > 0, got {scale}")
    if num_classes is None:
        num_classes = int(encoding["num_classes"]) if encoding is not None else 1000
    arrays, labels, taken = [], [], 0
    for path, meta in zip(files, metas):
        if limit is not None and taken >= int(limit):
            break
        try:
            lat, lab = npz_member(path, "latents"), npz_member(path, "labels")
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise DataError(f"cannot read latent shard {path}: {err}", hint=FORMAT_HINT) from None
        if lat.ndim != 4 or lab.ndim != 1 or lat.shape[0] != lab.shape[0]:
            raise DataError(f"{path}: latents {lat.shape} / labels {lab.shape} do not match", hint=FORMAT_HINT)
        check_shard(path, lat, meta)
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
    shape = tuple(arrays[0].shape[1:])
    identity = given_vae(vae, scale, encoding, files[0], shape) if vae is not None else None
    used = files[: len(arrays)]
    info: dict[str, Any] = {"source": "SD-VAE latent shards (.npz)", "root": str(base),
                            "shards": [p.name for p in used], "scale_factor": scale,
                            "prescaled": bool(prescaled), "license": "ImageNet terms of access (non-commercial research)"}
    if encoding is not None:
        info["encoding"] = {k: encoding[k] for k in ("key", "vae", "posterior", "precision", "source", "image_shape", "dtype")}
    if identity is not None:
        info["vae"] = identity.to_dict()
    if hash_files:
        info["files"] = {str(p): sha256_file(p, memo=True) for p in used}
    rows = ShardRows(arrays, scale=1.0 if prescaled else scale)
    ds = ArrayDataset(rows, y, num_classes=num_classes, name="latent_shards", kind="latent", info=info)
    ds.image_shape = (tuple(encoding["image_shape"]) if encoding is not None
                      else identity.image_shape(shape) if identity is not None else None)
    ds.decoder = LatentDecoder(vae if vae is not None else encoding["vae"]["path"] if encoding is not None else None,
                               expected_sha256=None if encoding is None else encoding["vae"]["sha256"],
                               scale_factor=scale, source=str(base))
    return ds.head(int(limit)) if limit is not None else ds


def peek_shards(root: str | Path, pattern: str = "*.npz") -> tuple[tuple[int, ...], int] | None:
    """(latent shape, classes) from the first shard's metadata without reading latents; ``None`` if there is none."""
    base = Path(root).expanduser()
    files = sorted(base.glob(pattern)) if base.is_dir() else []
    meta = read_meta(files[0]) if files else None
    return None if meta is None else (tuple(meta["latent_shape"]), int(meta["num_classes"]))
