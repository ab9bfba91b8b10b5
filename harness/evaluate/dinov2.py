"""DINOv2 [CLS] features from a user-supplied TorchScript file: seed 003's clustering features (Sec. 6.1).

Seed 003 clusters DINOv2-ViT-L/14 [CLS] embeddings (1024-d).  Its weights cannot be
downloaded on these machines, so nothing is fetched: pass ``path`` to a TorchScript export
that maps ImageNet-normalised (B, 3, 224, 224) images to (B, F) [CLS] features (e.g.
``torch.jit.trace`` of ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')``).
Its SHA-256 names the features in the clustering's cache key.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import DataError
from harness.evaluate.feature_extractors import _to_float3, batched_features, file_sha256
from harness.core.registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register("extractor", "dinov2")
class DINOv2:
    """[CLS] features of a user-supplied DINOv2 TorchScript file (no download, no stand-in), run on ``device``."""

    name = "dinov2"
    metric_prefix = "fd_dinov2"

    def __init__(self, path: Optional[str] = None, resolution: int = 224, batch_size: int = 64, device: str = "cpu") -> None:
        if not path or not Path(path).expanduser().exists():
            raise DataError(f"DINOv2 weights {'not given' if not path else f'not found at {path}'}",
                            hint="DINOv2 cannot be downloaded here; pass method.features_kwargs.path=/path/to/dinov2_vitl14.pt "
                                 "(TorchScript), or use method.features=pixels|smallcnn")
        weights = Path(path).expanduser()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(weights), map_location=device).eval()
        self.weights_source, self.weights_sha256 = str(weights), file_sha256(weights)
        self.resolution, self.batch_size, self.device = int(resolution), int(batch_size), device

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images on the device -> (B, F): bicubic to ``resolution``, ImageNet-normalised, [CLS]."""
        x = _to_float3(images) / 255.0
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return self.net((x - mean) / std)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, F) float64 [CLS] features, ``batch_size`` images at a time resized and embedded on ``device``."""
        return batched_features(self._embed, images, self.batch_size, self.device)

    def logits(self, images: torch.Tensor) -> None:
        return None
