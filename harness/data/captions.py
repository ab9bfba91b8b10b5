"""Image or latent rows paired with precomputed caption embeddings (text-conditioned training, seed 003).

Why a wrapper and not a new loader: the rows come from any registered dataset (latent shards,
Fashion-MNIST, ...), the captions from the user's encoder run (CLIP-ViT-L/14 outputs saved as
``.npy`` or ``.pt`` shards).  ``get_batch`` returns ``(x, captions)`` with captions float
(B, L, text_dim), which the text DiT reads as ``y`` (cross-attention, seed 003 Eq. 18).

A caption directory holds shards and :data:`META` (JSON)::

    {"format": "harness-captions-v1", "encoder": "openai/clip-vit-large-patch14",
     "text_len": 77, "text_dim": 768, "dtype": "float32", "shards": ["c_000.npy", ...]}

Loading checks every shard against it (shape (n, text_len, text_dim), dtype) and the row count
against the dataset's; :func:`check_against_backbone` checks it against the backbone's
``text_len``/``text_dim`` before training, each a one-line error naming the file and key.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.errors import ConfigError, DataError
from harness.core.registry import register
from harness.data.base import ArrayDataset, build_dataset
from harness.data.fashion_mnist import CLASSES, fashion_mnist
from harness.data.standin_text import ENCODER, encode_captions

META = "captions.json"
FORMAT = "harness-captions-v1"


def read_caption_meta(root: str | Path) -> tuple[Path, dict[str, Any]]:
    """The caption directory's metadata, checked for its keys."""
    path = Path(root).expanduser() / META
    if not path.is_file():
        raise DataError(f"{path}: caption metadata missing", hint=f"write {META} beside the caption shards (format {FORMAT})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err.msg})") from None
    for key in ("format", "encoder", "text_len", "text_dim", "dtype", "shards"):
        if key not in meta:
            raise DataError(f"{path}: key {key!r} missing", hint=f"format {FORMAT}")
    if meta["format"] != FORMAT:
        raise DataError(f"{path}: key 'format' is {meta['format']!r}, expected {FORMAT!r}")
    return path, meta


def _load_shard(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: caption shard missing")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True).numpy()
    raise DataError(f"{path}: caption shards must be .npy or .pt, got {path.suffix!r}")


def load_caption_shards(root: str | Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Shards (memory-mapped where .npy) in the metadata's order, each checked against its shape and dtype."""
    meta_path, meta = read_caption_meta(root)
    shape, dtype = (int(meta["text_len"]), int(meta["text_dim"])), str(meta["dtype"])
    shards = []
    for name in meta["shards"]:
        path = meta_path.parent / name
        arr = _load_shard(path)
        if arr.ndim != 3 or tuple(arr.shape[1:]) != shape:
            key = "text_len" if arr.ndim == 3 and arr.shape[1] != shape[0] else "text_dim"
            raise DataError(f"{path}: caption shard of shape {tuple(arr.shape)}, but {meta_path.name} key "
                            f"{key!r} says (n, {shape[0]}, {shape[1]})")
        if str(arr.dtype) != dtype:
            raise DataError(f"{path}: caption shard dtype {arr.dtype}, but {meta_path.name} key 'dtype' says {dtype}")
        shards.append(arr)
    return shards, {"root": str(meta_path.parent), **{k: meta[k] for k in ("encoder", "text_len", "text_dim", "dtype")},
                    "shards": list(meta["shards"])}


class CaptionedDataset(ArrayDataset):
    """A dataset's rows with one caption embedding per item; ``get_batch`` -> (x, captions (B, L, text_dim)).

    ``table`` holds distinct caption embeddings (K, L, text_dim) (shards of K = N rows, or one row per
    class caption for a class-caption twin), ``index`` (N,) picks each item's row.  ``y`` keeps the base
    dataset's labels (a text-alignment metric reads them); ``caption_meta`` is the encoder record.
    """

    def __init__(self, base: ArrayDataset, table: list[np.ndarray] | torch.Tensor, index: torch.Tensor,
                 caption_meta: dict[str, Any]) -> None:
        super().__init__(base._x, base.y, num_classes=base.num_classes, name=f"{base.name}+captions",
                         kind=base.kind, info={**base.info, "captions": caption_meta})
        for key, value in vars(base).items():              # extra attributes (decoder, image_shape, ...)
            if key not in vars(self):
                setattr(self, key, value)
        self.table = [table] if isinstance(table, torch.Tensor) else list(table)
        self.offsets = np.cumsum([0] + [len(t) for t in self.table])
        self.index = torch.as_tensor(index, dtype=torch.long)
        self.caption_meta = dict(caption_meta)
        if self.index.shape[0] != len(base):
            raise DataError(f"{caption_meta.get('root', 'captions')}: {int(self.offsets[-1])} captions for "
                            f"{len(base)} rows of {base.name}", hint="one caption embedding per item, in the rows' order")

    @property
    def text_shape(self) -> tuple[int, int]:
        return int(self.caption_meta["text_len"]), int(self.caption_meta["text_dim"])

    def captions(self, idx: torch.Tensor) -> torch.Tensor:
        """Caption embeddings of items ``idx``: (B, L, text_dim) float32."""
        rows = self.index[torch.as_tensor(idx, dtype=torch.long)].numpy()
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        out = torch.empty(len(rows), *self.text_shape)
        for s in np.unique(shard):                                      # one fancy read per shard touched
            pick = np.nonzero(shard == s)[0]
            part = self.table[s][rows[pick] - self.offsets[s]]
            out[torch.from_numpy(pick)] = torch.as_tensor(np.array(part) if isinstance(part, np.ndarray) else part,
                                                          dtype=torch.float32)
        return out

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = super().get_batch(idx)
        return x, self.captions(idx)

    def _replace_rows(self, idx: torch.Tensor) -> "CaptionedDataset":
        new = super()._replace_rows(idx)
        new.index = self.index[idx]
        new.caption_meta = copy.deepcopy(self.caption_meta)
        return new


def with_caption_shards(base: ArrayDataset, root: str | Path) -> CaptionedDataset:
    """``base``'s rows paired with the caption shards under ``root`` (one per row, in order)."""
    shards, meta = load_caption_shards(root)
    n = sum(len(s) for s in shards)
    if n != len(base):
        raise DataError(f"{Path(root) / META}: key 'shards' holds {n} captions, {base.name} has {len(base)} rows",
                        hint="one caption embedding per item, in the rows' order")
    return CaptionedDataset(base, shards, torch.arange(n), meta)


def check_against_backbone(dataset: Any, text_len: int | None, text_dim: int | None) -> None:
    """Before training: a text backbone needs captions of its (text_len, text_dim); a class backbone none."""
    if text_dim is None:
        if isinstance(dataset, CaptionedDataset):
            raise ConfigError(f"data {dataset.name} yields caption embeddings, the backbone has no text_dim",
                              hint=f"set backbone.text_dim={dataset.text_shape[1]} backbone.text_len={dataset.text_shape[0]}")
        return
    if not isinstance(dataset, CaptionedDataset):
        raise ConfigError(f"backbone.text_dim={text_dim}: data {getattr(dataset, 'name', '?')} has no caption embeddings",
                          hint="pair the rows with caption shards (data.captions=DIR) or use a class-conditioned backbone")
    L, E = dataset.text_shape
    where = Path(dataset.caption_meta.get("root", "captions")) / META
    if L != int(text_len):
        raise ConfigError(f"{where}: key 'text_len' is {L}, backbone.text_len is {text_len}")
    if E != int(text_dim):
        raise ConfigError(f"{where}: key 'text_dim' is {E}, backbone.text_dim is {text_dim}")


@register("dataset", "captioned")
def captioned(*, base: dict, captions: str, limit: int | None = None) -> CaptionedDataset:
    """Any registered dataset node ``base`` (e.g. latent shards) paired with the caption shards in ``captions``."""
    rows = build_dataset(base)
    ds = with_caption_shards(rows, captions)
    return ds.head(int(limit)) if limit is not None else ds


captioned.yields_captions = True  # harness validate: a text backbone needs such a dataset


def class_captions(classes: tuple[str, ...] | list[str]) -> list[str]:
    """"a photo of a <class>" per class, the CPU twin's captions."""
    return [f"a photo of a {name}" for name in classes]


@register("dataset", "fashion_mnist_captioned")
def fashion_mnist_captioned(*, split: str = "train", root: str | None = None, limit: int | None = None,
                            text_len: int = 8, text_dim: int = 32) -> CaptionedDataset:
    """CPU twin of a text-conditioned dataset: Fashion-MNIST, each item captioned "a photo of a <its class>",
    embedded by ``standin-text-encoder-v1`` (never CLIP); labels kept for the text-alignment stand-in metric."""
    base = fashion_mnist(split=split, root=root, limit=limit)
    texts = class_captions(CLASSES)
    table = encode_captions(texts, int(text_len), int(text_dim))          # (10, L, E): one row per class caption
    meta = {"root": f"<{ENCODER}>", "encoder": ENCODER, "text_len": int(text_len), "text_dim": int(text_dim),
            "dtype": "float32", "captions": texts}
    return CaptionedDataset(base, table, base.y.clone(), meta)


fashion_mnist_captioned.yields_captions = True
