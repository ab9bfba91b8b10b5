"""AutoGuidance (Karras et al. 2024; seed 004 Tab. 2 "+AG", Sec. 4.3): the weak branch is a
smaller and/or less-trained version of the model, conditional like the strong one.

The weak model is its own content-hashed unit: the method's data, objective and train node
with ``weak_steps`` steps (an undertrained model: with the same seed and no learning-rate
decay it is exactly the main run's checkpoint at that step, seed 004 Fig. 7) and the backbone
node updated by ``weak_backbone`` (a smaller model, e.g. ``{depth: 2}``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from harness.core.errors import ConfigError
from harness.field.guided import Branch
from harness.api.guidance import ScaledGuidance
from harness.api.method import net_field
from harness.core.registry import register
from harness.train.units import UnitSpec, unit_from_config

WEAK_ROLE = "guidance/weak"


def check_weak_model(cfg: Mapping[str, Any]) -> None:
    """AG needs a weak model that differs from the strong one."""
    g, name = cfg["guidance"], cfg["guidance"]["name"]
    steps, backbone = g.get("weak_steps"), g.get("weak_backbone") or {}
    if steps is None and not backbone:
        raise ConfigError(f"guidance.weak_steps: guidance={name} needs a weak model, got neither weak_steps nor weak_backbone",
                          hint="set guidance.weak_steps (fewer than train.steps, e.g. 1/16 of them) and/or "
                               "guidance.weak_backbone={depth: 2}")
    if steps is not None and int(steps) <= 0:
        raise ConfigError(f"guidance.weak_steps must be > 0, got {steps}")
    if steps is not None and not backbone and int(steps) >= int(cfg["train"]["steps"]):
        raise ConfigError(f"guidance.weak_steps must be < train.steps={cfg['train']['steps']} for an undertrained "
                          f"weak model, got {steps}", hint="or make it smaller with guidance.weak_backbone")
    unknown = [k for k in backbone if k not in cfg["backbone"]]
    if unknown:
        raise ConfigError(f"guidance.weak_backbone.{unknown[0]}: not a key of backbone={cfg['backbone']['name']}",
                          hint=f"known: {', '.join(sorted(cfg['backbone']))}")


def weak_unit(cfg: Mapping[str, Any], weak_steps: Optional[int], weak_backbone: Optional[Mapping[str, Any]]) -> UnitSpec:
    """The weak model's unit: the method's config with fewer steps and/or a smaller backbone."""
    overrides = {} if weak_steps is None else {"steps": int(weak_steps)}
    spec = unit_from_config(cfg, label="autoguidance weak model", **overrides)
    return dataclasses.replace(spec, backbone=dict(spec.backbone, **dict(weak_backbone or {})))


class WeakModelUnit:
    """Mixin for guidances whose weak branch is AutoGuidance's weak model, trained as its own unit (AG, AG+SG).

    Put it before the guidance base so ``check_config`` chains to the base's checks.
    """

    weak_steps: Optional[int]
    weak_backbone: dict

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)  # type: ignore[misc]
        check_weak_model(cfg)

    def units(self) -> dict[str, UnitSpec]:
        return {WEAK_ROLE: weak_unit(self.cfg, self.weak_steps, self.weak_backbone)}  # type: ignore[attr-defined]


@register("guidance", "autoguidance")
class AutoGuidance(WeakModelUnit, ScaledGuidance):
    def __init__(self, cfg, scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 weak_steps: Optional[int] = None, weak_backbone: Optional[dict] = None) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed)
        self.weak_steps, self.weak_backbone = weak_steps, dict(weak_backbone or {})

    def wrap(self, field, parts, num_classes):
        return self.guided(Branch(field, "cond", stream=0), Branch(net_field(parts[WEAK_ROLE]), "cond", stream=1),
                           num_classes)

    def describe(self) -> dict:
        return {**super().describe(), "weak_steps": self.weak_steps, "weak_backbone": self.weak_backbone}
