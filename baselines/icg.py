"""Independent condition guidance (Sadat et al. 2024; seed 004 Tab. 2 "+ICG"): the weak branch
sees a class drawn uniformly at random, redrawn at every step, instead of the null class, so
no label dropout is needed in training (the prediction for an independent class approximates
the unconditional one).
"""
from __future__ import annotations

from harness.field.guided import Branch
from harness.api.guidance import ScaledGuidance, require_labels
from harness.core.registry import register


@register("guidance", "icg")
class ICG(ScaledGuidance):
    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_labels(cfg, "a random-class branch")

    def wrap(self, field, parts, num_classes):
        return self.guided(Branch(field, "cond", stream=0), Branch(field, "random", stream=1), num_classes)
