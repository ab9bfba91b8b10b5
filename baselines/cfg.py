"""Classifier-free guidance (Ho & Salimans 2022; seed 004 Eq. 3): the weak branch is the null class.

``v = v(null) + omega (v(c) - v(null))``; both branches dense (the backbone's eval sparsity).
Needs labelled data and a null class trained by label dropout (``train.label_dropout``).
"""
from __future__ import annotations

from harness.field.guided import Branch
from harness.api.guidance import ScaledGuidance, require_null_class
from harness.core.registry import register


@register("guidance", "cfg")
class CFG(ScaledGuidance):
    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_null_class(cfg)

    def wrap(self, field, parts, num_classes):
        return self.guided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1), num_classes)
