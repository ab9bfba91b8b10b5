"""Classifier-free guidance (Ho & Salimans 2022; seed 004 Eq. 3): the weak branch is the null class.

``v = v(null) + omega (v(c) - v(null))``; both branches dense (the backbone's eval sparsity).
Needs labelled data and a null class trained by label dropout (``train.label_dropout``).

``guide_channels: 3`` reproduces the released DiT/SiT code, whose ``forward_with_cfg`` guides only the first
3 of the 4 SD-VAE latent channels and leaves the 4th (and DiT's variance channels) conditional; their
published FIDs (DiT-XL/2 2.27, SiT-XL/2 2.06 / 2.15) were measured so.  ``null`` (default): every channel.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from harness.field.guided import Branch
from harness.api.guidance import ScaledGuidance, require_null_class
from harness.core.errors import ConfigError
from harness.core.registry import register
from harness.data.shapes import data_shape


@register("guidance", "cfg")
class CFG(ScaledGuidance):
    def __init__(self, cfg: Mapping[str, Any], scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 guide_channels: Optional[int] = None) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed)
        self.guide_channels = None if guide_channels is None else int(guide_channels)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_null_class(cfg)
        k = cfg["guidance"].get("guide_channels")
        if k is not None:
            channels = int(data_shape(cfg["data"])[0][0])
            if not 1 <= int(k) <= channels:
                raise ConfigError(f"guidance.guide_channels must be in [1, {channels}] (the data's channels) or null, "
                                  f"got {k}", hint="3 = the DiT/SiT release on 4-channel latents; null = every channel")

    def wrap(self, field, parts, num_classes):
        return self.guided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1), num_classes,
                           channels=self.guide_channels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **({"guide_channels": self.guide_channels} if self.guide_channels else {})}
