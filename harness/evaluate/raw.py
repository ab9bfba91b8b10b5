"""The identity 'extractor' for vector data (the Gaussian-mixture oracle): Frechet distance on raw coordinates.

Labelled ``fd_raw``: a distance between the generated and the analytic distribution in
data space, which is meaningful for low-dimensional synthetic data and never an image metric.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.core.registry import register


@register("extractor", "raw")
class RawFeatures:
    name = "raw"
    metric_prefix = "fd_raw"
    weights_sha256 = "none"
    weights_source = "identity"

    def __init__(self) -> None:
        self.dim = None

    def features(self, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """(N, D) float64: the samples themselves, flattened."""
        return x.detach().reshape(len(x), -1).double().cpu().numpy()

    def logits(self, x: torch.Tensor):
        return None
