"""CIFAR-10 from the official python-pickle directory ``cifar-10-batches-py``.

Why a hand-written reader: the papers' small-scale numbers are on CIFAR-10, which cannot be
downloaded on these machines; the loader must still be the real one, so it reads exactly
the files of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz:

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta, readme.html

Each batch is a (Python 2) pickled dict with ``b'data'`` uint8 (n, 3072) -- the R, G and B
planes of a 32x32 image one after another, row-major -- ``b'labels'`` (list of int),
``b'batch_label'`` and ``b'filenames'``; ``batches.meta`` holds ``b'label_names'``.
:mod:`harness.data.standin` writes Fashion-MNIST in this layout so CI exercises this code.
Pickles are read with an unpickler that only accepts numpy arrays (no code execution).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.errors import DataError
from harness.core.registry import register
from harness.data.base import ArrayDataset, check_split, file_record, finish, load_array_pickle
from harness.data.cifar10_format import DIRNAME, META_FILE, STANDIN_MANIFEST, STANDIN_PARENT, TEST_FILES, TRAIN_FILES
from harness.data.transforms import uint8_to_float

log = logging.getLogger(__name__)

LICENSE = "CIFAR-10 (Krizhevsky 2009): no formal licence; see https://www.cs.toronto.edu/~kriz/cifar.html"


def missing_error(root: Path, missing: list[str]) -> DataError:
    what = "does not exist" if not root.exists() else f"lacks {', '.join(missing)}"
    return DataError(
        f"CIFAR-10 directory {root} {what}: expected the official python-pickle directory {DIRNAME} "
        f"({', '.join(TRAIN_FILES)}, {TEST_FILES[0]}, {META_FILE})",
        hint=(f"CIFAR-10 cannot be downloaded on this machine; copy cifar-10-python.tar.gz here, run "
              f"`tar xzf cifar-10-python.tar.gz` and set data.root=/path/to/{DIRNAME}, or write the "
              f"Fashion-MNIST stand-in in CIFAR-10's format with `harness standin DIR` "
              f"(harness.data.standin.write_cifar10_standin) and use data=cifar10_standin"),
    )


def resolve_root(root: str | Path) -> Path:
    """``root`` may be ``cifar-10-batches-py`` itself or the directory that contains it."""
    path = Path(root).expanduser()
    if not (path / META_FILE).is_file() and (path / DIRNAME / META_FILE).is_file():
        path = path / DIRNAME
    return path


def _maybe_write_standin(path: Path) -> None:
    """The stand-in's config points into the harness cache; build it there on first use.

    Only for that exact location (``.../fashion_mnist_as_cifar10_standin/cifar-10-batches-py``),
    which the stand-in writer owns: a user's real CIFAR-10 path is never written to.
    """
    if creates_root(path) and not (path / STANDIN_MANIFEST).is_file():
        from harness.data.standin import write_cifar10_standin

        log.warning("writing the CIFAR-10-format stand-in (Fashion-MNIST, NOT CIFAR-10) to %s", path)
        write_cifar10_standin(path.parent)


def creates_root(root: Path) -> bool:
    """Whether ``data.root`` is the stand-in's location in the harness cache, which its loader writes on first use
    (config validation asks the registered factory this instead of requiring the directory to exist)."""
    return root.name == DIRNAME and root.parent.name == STANDIN_PARENT


def read_batch(path: Path) -> dict[str, Any]:
    """One batch file as ``{'data': uint8 (n, 3072), 'labels': int64 (n,), ...}`` (str keys)."""
    try:
        with open(path, "rb") as f:
            raw = load_array_pickle(f, encoding="bytes")
    except Exception as err:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {type(err).__name__}: {err}",
                        hint="the file is not an official CIFAR-10 python batch; re-extract cifar-10-python.tar.gz") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing key {'data' if 'data' not in batch else 'labels'!r} "
                        f"(has {sorted(batch)})", hint="is this CIFAR-100? only CIFAR-10 batches are supported")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: data {data.dtype} {data.shape} / labels {labels.shape}: expected uint8 (n, 3072) "
                        "and n labels")
    batch["data"], batch["labels"] = data, labels
    return batch


def read_label_names(path: Path) -> list[str]:
    with open(path, "rb") as f:
        meta = load_array_pickle(f, encoding="bytes")
    names = meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
    if names is None:
        raise DataError(f"{path}: no label_names in batches.meta")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


@register("dataset", "cifar10")
def cifar10(*, root: str, split: str = "train", limit: int | None = None) -> ArrayDataset:
    """CIFAR-10 as (N, 3, 32, 32) float32 in [-1, 1], 10 classes (50k train / 10k test).

    ``root`` is the ``cifar-10-batches-py`` directory (or its parent).  Batches are read in
    order until ``limit`` images are collected.
    """
    check_split(split)
    path = resolve_root(root)
    _maybe_write_standin(path)
    names = TRAIN_FILES if split == "train" else TEST_FILES
    missing = [n for n in (*names, META_FILE) if not (path / n).is_file()]
    if missing:
        raise missing_error(path, missing)
    label_names = read_label_names(path / META_FILE)
    datas, labels, used = [], [], []
    total = 0
    for name in names:
        if limit is not None and total >= int(limit):
            break
        batch = read_batch(path / name)
        datas.append(batch["data"])
        labels.append(batch["labels"])
        used.append(path / name)
        total += batch["data"].shape[0]
    data = np.concatenate(datas)[: limit if limit is not None else None]
    y = np.concatenate(labels)[: data.shape[0]]
    x = uint8_to_float(torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32))))
    standin = None
    if (path / STANDIN_MANIFEST).is_file():
        standin = json.loads((path / STANDIN_MANIFEST).read_text())
        log.warning("%s is a STAND-IN (%s), not CIFAR-10", path, standin.get("source", "see readme"))
    info = {"source": "CIFAR-10 python-pickle batches" if standin is None else "CIFAR-10-format STAND-IN",
            "root": str(path), "split": split, "files": file_record(used + [path / META_FILE]),
            "classes": label_names, "license": LICENSE if standin is None else standin.get("license", ""),
            "standin": standin}
    ds = ArrayDataset(x, torch.from_numpy(y), num_classes=len(label_names), name="cifar10", kind="image", info=info)
    return finish(ds, limit)


cifar10.creates_root = creates_root  # type: ignore[attr-defined]  (read by harness.config.compose.check_data_root)
