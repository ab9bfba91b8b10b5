"""scikit-learn's 8x8 handwritten digits: the smallest real image set (1797 images, 10 classes).

Why: it ships inside scikit-learn (no download, no extra package), and at 8x8 a model
trains in seconds on a CPU, which makes it the fastest *real-image* check of a method.
Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap) mapped linearly to [-1, 1].
There is no official split; a fixed seeded permutation gives 80 % train / 20 % test so
the split is the same everywhere and never depends on the run's seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.base import ArrayDataset, check_split, file_record, finish
from harness.data.transforms import unit_to_float
from harness.core.registry import register

SPLIT_SEED = 0        # fixed: the split is part of the dataset's definition, not of a run
TRAIN_FRACTION = 0.8
MAX_VALUE = 16.0
LICENSE = "CC BY 4.0 (UCI Optical Recognition of Handwritten Digits, via scikit-learn)"


def split_indices(n: int, split: str, *, seed: int = SPLIT_SEED, train_fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """Sorted indices of ``split`` under a fixed seeded 80/20 permutation of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = int(round(train_fraction * n))
    chosen = perm[:n_train] if split == "train" else perm[n_train:]
    return np.sort(chosen)


def _source_file() -> Path | None:
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@register("dataset", "digits")
def digits(*, split: str = "train", limit: int | None = None) -> ArrayDataset:
    """Digits as (N, 1, 8, 8) float32 in [-1, 1], 10 classes (1438 train / 359 test)."""
    from sklearn.datasets import load_digits

    check_split(split)
    bunch = load_digits()
    idx = split_indices(len(bunch.target), split)
    images = bunch.images[idx].astype(np.float32)
    labels = bunch.target[idx].astype(np.int64)
    x = unit_to_float(images, MAX_VALUE).unsqueeze(1)
    src = _source_file()
    info = {"source": "sklearn.datasets.load_digits", "split": split,
            "split_rule": f"randperm(seed={SPLIT_SEED}), first {TRAIN_FRACTION:.0%} train",
            "pixel_scale": "0..16 -> [-1, 1]", "license": LICENSE,
            "files": file_record([src]) if src else {}}
    ds = ArrayDataset(x, torch.from_numpy(labels), num_classes=10, name="digits", kind="image", info=info)
    return finish(ds, limit)
