"""S^2-Guidance, stochastic self-guidance (Chen et al. 2025, arXiv 2508.12880; seed 004 Tab. 2's "+S^2 [8]" row).

CFG plus a correction away from a stochastic sub-network of the model itself: at every guided step a random
fraction ``drop`` of the transformer blocks is skipped in one extra conditional forward
(:mod:`harness.backbones.block_drop`), and

    v = v(null) + omega (v(c) - v(null)) + omega_s (v(c) - v_sub(c)),

so the update leans away from what the weakened network predicts, as AutoGuidance leans away from a
weaker model, without training one.  Equal sub-network and full predictions leave CFG exactly.

Provenance, stated because it cannot be checked here: the authors' code is unreleased ("Our code will be
released", AMAP-ML/S2-Guidance) and the paper's method section was not readable in this workplace's
corpus (only its abstract and summaries: "stochastic block-dropping during the forward process to
construct sub-networks, effectively guiding the model away from potential low-quality predictions", one
drop per step).  The combination above, written as a difference so that omega_s weighs a direction and
not a raw prediction, and the defaults (omega_s = 0.1 ... see the config, drop = 0.1 of the blocks) are our
reading: assumptions, recorded with every run.  Seed 004 prints no S^2 hyper-parameters and counts its cost
as CFG's (228.84 GFLOPs); ours is counted on the real call, three forwards per guided step (the third
at (1 - drop) of a dense one), so its GFLOPs column is larger than the seed's.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from harness.api.guidance import ScaledGuidance, require_null_class
from harness.core.errors import ConfigError
from harness.core.registry import register, registry
from harness.field.base import batch_times
from harness.field.guided import Branch, Guided
from harness.objectives.base import VELOCITY, Parameterisation, Prediction


class SelfGuided(Guided):
    """:class:`Guided` (CFG) with a third, block-dropped conditional branch ``sub`` weighted by ``sub_scale``."""

    def __init__(self, strong: Branch, weak: Branch, sub: Branch, scale: float, sub_scale: float, **kwargs: Any) -> None:
        super().__init__(strong, weak, scale, **kwargs)
        self.sub, self.sub_scale = sub, float(sub_scale)

    def velocity(self, x, t, y=None):
        call, self.calls = self.calls, self.calls + 1
        t = batch_times(x, t)
        strong = self.branch(self.strong, x, t, y, call)
        on = self.guided_at(t)
        meta = x.device.type == "meta"
        if not meta and not bool(on.any()):
            return strong
        weak = self.branch(self.weak, x, t, y, call)
        sub = self.branch(self.sub, x, t, y, call)
        guided = self.combine(strong, weak) + self.sub_scale * (strong - sub)
        if meta or bool(on.all()):
            return guided
        return torch.where(on.reshape(-1, *([1] * (x.dim() - 1))), guided, strong)

    def predict(self, x, t, y=None) -> Prediction:
        return Prediction("velocity", self(x, t, y))       # guidance on velocities (no DDPM-eps fast path)

    @property
    def parameterisation(self) -> Parameterisation:
        return VELOCITY


@register("guidance", "s2")
class S2Guidance(ScaledGuidance):
    def __init__(self, cfg: Mapping[str, Any], scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 sub_scale: float = 0.1, drop: float = 0.1) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed)
        self.sub_scale, self.drop = float(sub_scale), float(drop)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_null_class(cfg)
        g = cfg["guidance"]
        if float(g.get("sub_scale", 0.1)) < 0:
            raise ConfigError(f"guidance.sub_scale must be >= 0 (omega_s; 0 = CFG), got {g.get('sub_scale')}")
        if not 0.0 < float(g.get("drop", 0.1)) < 1.0:
            raise ConfigError(f"guidance.drop must be in (0, 1) (fraction of blocks skipped in the sub-network), "
                              f"got {g.get('drop')}")
        name = cfg["backbone"]["name"]
        if not getattr(registry("backbone").get(name), "supports_block_drop", False):
            raise ConfigError(f"guidance=s2 drops transformer blocks, but backbone={name} has no block stack that can skip them",
                              hint="use a DiT-family backbone (dit, sit, jit), or guidance=cfg / autoguidance")

    def wrap(self, field, parts, num_classes):
        return SelfGuided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1),
                          Branch(field, "cond", stream=2, drop=self.drop), self.scale, self.sub_scale,
                          interval=self.interval, num_classes=num_classes, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sub_scale": self.sub_scale, "drop": self.drop,
                "assumption": "combination v_cfg + omega_s (v_c - v_sub) and defaults are our reading (code unreleased)"}
