"""Sample diversity as the mean pairwise distance between samples' features (seed 003, Sec. 3.3.2 and 3.4.1).

Seed 003 reports mean pairwise LPIPS among generated images (higher = more diverse; Tab. 3,
and 10 images per prompt for Sec. 3.4.1).  LPIPS needs AlexNet/VGG backbone weights that
cannot be downloaded here, so this module computes the same statistic on any registered
extractor's features (cosine distance of L2-normalised features) and names it for what it
is: ``div_<extractor>`` ("mean pairwise cosine distance, smallcnn features"), never LPIPS.
"""
from __future__ import annotations

import numpy as np


def pairwise_diversity(features: np.ndarray, max_pairs: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Mean and std of the cosine distance 1 - <f_i, f_j> over distinct pairs i < j (all, or a seeded sample)."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(f) < 2:
        raise ValueError("diversity needs at least 2 samples")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = len(f)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
        keep = i != j
        i, j = i[keep], j[keep]
    d = 1.0 - np.einsum("pd,pd->p", f[i], f[j])
    return {"mean": float(d.mean()), "std": float(d.std()), "pairs": int(len(d))}
