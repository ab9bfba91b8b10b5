"""Fashion-MNIST (Zalando, MIT) from the original idx gzip files.

Why this dataset: it is the only real 10-class image set that installs offline on these
machines (Debian package ``dataset-fashion-mnist``), so it carries the CPU-scale twins of
the papers' experiments and is the source of the CIFAR-10-format stand-in.  The files are
read directly (idx format: big-endian magic, dims, then raw uint8), no torchvision needed.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from harness.data.base import ArrayDataset, check_split, file_record, finish
from harness.data.transforms import uint8_to_float
from harness.core.errors import DataError
from harness.core.registry import register

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install dataset-fashion-mnist` puts them
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
LICENSE = "MIT (Zalando Research, https://github.com/zalandoresearch/fashion-mnist)"
INSTALL_HINT = "apt-get install dataset-fashion-mnist (files land in /usr/share/datasets/fashion-mnist) or set data.root=PATH"


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file into a numpy array of its declared shape.

    Format (LeCun): 2 zero bytes, a type code (0x08 = uint8), the number of dims, then
    each dim as a big-endian uint32, then the data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read idx file {path}: {err}", hint=INSTALL_HINT) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (magic {raw[:4].hex()})", hint=INSTALL_HINT)
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {data.size}",
                        hint="the file is truncated; reinstall it")
    return data.reshape(dims)


def find_idx_files(root: Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of ``split`` under ``root`` (gzipped or not)."""
    found = []
    for name in FILES[split]:
        for candidate in (root / name, root / name[:-3]):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            raise DataError(f"Fashion-MNIST file {root / name} not found", hint=INSTALL_HINT)
    return found[0], found[1]


def load_idx_pair(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of one split, with the files read."""
    img_path, lbl_path = find_idx_files(root, split)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} / {lbl_path}: shapes {images.shape} and {labels.shape} do not match",
                        hint=INSTALL_HINT)
    return images, labels.astype(np.int64), [img_path, lbl_path]


@register("dataset", "fashion_mnist")
def fashion_mnist(*, split: str = "train", root: str | None = None, limit: int | None = None) -> ArrayDataset:
    """Fashion-MNIST as (N, 1, 28, 28) float32 in [-1, 1], 10 classes (60k train, 10k test).

    ``root`` defaults to the Debian package's directory; ``limit`` keeps the first n.
    """
    check_split(split)
    base = Path(root).expanduser() if root else DEFAULT_ROOT
    if not base.is_dir():
        raise DataError(f"Fashion-MNIST directory {base} does not exist", hint=INSTALL_HINT)
    images, labels, files = load_idx_pair(base, split)
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    x = uint8_to_float(torch.from_numpy(images.copy())).unsqueeze(1)
    info = {"source": "Debian dataset-fashion-mnist (original idx gzip files)", "split": split,
            "files": file_record(files), "license": LICENSE, "classes": list(CLASSES)}
    ds = ArrayDataset(x, torch.from_numpy(labels), num_classes=10, name="fashion_mnist", kind="image", info=info)
    return finish(ds, limit)
