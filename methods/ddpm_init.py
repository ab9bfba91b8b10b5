"""Seed 003 Sec. 2.6 / 3.2.2 as a method: one network initialised from a DDPM-eps DiT trained first.

The seed initialises flow-matching experts from an ImageNet DDPM DiT (Eq. 20, with Eq. 21's time map)
and reports "1.2x faster convergence" in validation loss against training from scratch (Sec. 3.2.2,
75K steps).  Here the pretrained DDPM DiT is a harness unit of its own (``method.pretrain``: its data,
steps, schedule and seed), trained in :meth:`prepare` like CBS's aux model, so a sweep plans it once as
a dependency; :meth:`units` is the run's single network with ``backbone.init_from`` set to that unit's
final checkpoint, ``init_transfer: eq20`` and, for a flow-matching objective, ``time_map: eq21``.
With ``method.pretrain.steps: 0`` nothing is pretrained: the same network from scratch (the control),
which keeps the same time map so both arms differ only in their initial weights.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.api.method import Method, net_field
from harness.core.errors import ConfigError
from harness.core.registry import register
from harness.field import Field
from harness.train.units import UnitSpec, done_record, unit_from_config

INIT_KEYS = ("init_from", "init_transfer", "time_map")


@register("method", "ddpm_init")
class DDPMInit(Method):
    """A network initialised by Eq. 20 from a DDPM-eps DiT pretrained on ``pretrain.data`` (0 steps: scratch)."""

    time_experts = 1

    def __init__(self, cfg, pretrain: Optional[Mapping[str, Any]] = None, time_map: Optional[str] = "eq21") -> None:
        super().__init__(cfg)
        self.pretrain = dict(pretrain or {})
        self.time_map = time_map
        self.init_from: Optional[str] = None
        self._stand_in = False   # a stand-in (describe before prepare) has the network's shapes without its init

    @classmethod
    def check_config(cls, cfg) -> None:
        p = cfg["method"].get("pretrain") or {}
        if int(p.get("steps", 0)) < 0:
            raise ConfigError(f"method.pretrain.steps must be >= 0, got {p.get('steps')}")
        if cfg["backbone"]["name"] not in ("dit", "sit"):
            raise ConfigError(f"method=ddpm_init transfers DiT weights (seed 003 Eq. 20): backbone={cfg['backbone']['name']}",
                              hint="use backbone=dit_tiny (or another DiT size)")
        if p.get("steps") and cfg["objective"]["name"] == "ddpm" and cfg["method"].get("time_map"):
            raise ConfigError("method.time_map: Eq. 21 maps flow-matching experts only; set method.time_map=null for ddpm")

    @property
    def steps(self) -> int:
        return int(self.pretrain.get("steps", 0))

    def pretrain_unit(self) -> UnitSpec:
        """The DDPM-eps DiT the network starts from: the run's backbone and train node, the pretrain's data/steps/seed."""
        p = self.pretrain
        backbone = {k: v for k, v in self.cfg["backbone"].items() if k not in INIT_KEYS}
        train = dict(self.cfg["train"], steps=self.steps, seed=int(p.get("seed", 0)))
        objective = {"name": "ddpm", "schedule": p.get("schedule", "cosine")}
        data = dict(self.cfg["data"], **dict(p.get("data") or {}))
        return UnitSpec(label=f"DDPM pretrain ({data['name']}, {self.steps} steps)", data=data, backbone=backbone,
                        objective=objective, train=train)

    def needs_prepare(self) -> bool:
        return self.steps > 0 and self.init_from is None

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Train (or reuse: it is content-hashed) the DDPM pretrain unit; the network then starts from its checkpoint."""
        if not self.needs_prepare():
            return
        from harness.pipeline.training import train_units

        spec = self.pretrain_unit()
        train_units({"pretrain": spec}, self.cfg, tracker=tracker, parent_id=parent_id)
        unit_dir = spec.directory(Path(self.cfg["paths"]["workdir"]))
        record = done_record(unit_dir)
        if record is None:
            raise RuntimeError(f"pretrain unit {spec.hash} did not finish")
        self.init_from = str(unit_dir / record["checkpoint"])

    def stand_in(self) -> "DDPMInit":
        """Before the pretrain: the same network without the transfer keys (same sizes)."""
        other = copy.copy(self)
        other._stand_in = True
        return other

    def units(self) -> dict[str, UnitSpec]:
        cfg = dict(self.cfg, backbone=dict(self.cfg["backbone"]))
        if self.time_map is not None and cfg["objective"]["name"] != "ddpm":
            cfg["backbone"]["time_map"] = self.time_map
        if self.steps > 0 and not self._stand_in:
            if self.init_from is None:
                raise RuntimeError("DDPMInit.units() before prepare(): the network starts from the pretrain unit")
            cfg["backbone"].update(init_from=self.init_from, init_transfer="eq20")
        label = "from scratch" if self.steps == 0 else f"Eq. 20 from DDPM ({self.steps} steps)"
        return {"model": unit_from_config(cfg, label=label)}

    def assemble(self, parts) -> Field:
        return net_field(parts["model"])

    def describe(self) -> dict[str, Any]:
        return {"pretrain_steps": self.steps, "init_from": self.init_from, "time_map": self.time_map}
