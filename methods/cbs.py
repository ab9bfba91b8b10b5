"""CBS: complexity-balanced splitting (seed 000): experts on intervals of equal monitor mass.

The DAG of seed 000, Sec. 3.3-3.4: aux model (10 % of the data, content-hashed unit) ->
monitor curve (path acceleration, Eq. 14, by default) -> equidistributed boundaries ->
N experts, each trained only on its interval (Alg. 1's ``sample_t(bounds[i], bounds[i+1])``,
here as independent units sharing the seed, so CBS and the naive split see paired draws) ->
``Piecewise``.  ``boundaries`` overrides the computed ones (boundary-perturbation sweeps).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from harness.baselines.naive_split import BUDGETS, check_training, joint_unit, split_units
from harness.errors import ConfigError
from harness.field import Field, Piecewise, check_boundaries
from harness.method import Method, net_field
from harness.registry import register
from harness.units import UnitSpec, content_hash


@register("method", "cbs")
class CBS(Method):
    def __init__(self, cfg, n: int = 3, monitor: str = "acceleration", budget: str = "per_expert",
                 boundaries: Optional[list[float]] = None, training: str = "independent") -> None:
        super().__init__(cfg)
        self.n, self.monitor, self.budget, self.training = int(n), monitor, budget, training
        self.boundaries = None if boundaries is None else check_boundaries(boundaries, self.n, "method.boundaries")
        self.split_result: Optional[dict[str, Any]] = None

    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg["method"]
        if int(m.get("n", 3)) < 1:
            raise ConfigError(f"method.n must be >= 1, got {m.get('n')}")
        if m.get("budget", "per_expert") not in BUDGETS:
            raise ConfigError(f"method.budget must be one of {', '.join(BUDGETS)}, got {m.get('budget')!r}")
        if m.get("boundaries") is not None:
            check_boundaries(m["boundaries"], int(m.get("n", 3)), "method.boundaries")
        check_training(m)
        from harness.registry import registry

        registry("monitor").get(m.get("monitor", "acceleration"))

    def split_config(self) -> dict[str, Any]:
        return dict(self.cfg, split=dict(self.cfg["split"], n=self.n, monitor=self.monitor))

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Train/reuse the aux model and compute the boundaries (cached by content hash)."""
        if self.boundaries is not None:
            return
        from harness.split.run import compute_split

        cfg = self.split_config()
        key = content_hash({"data": cfg["data"], "split": cfg["split"], "backbone": cfg["backbone"],
                            "objective": cfg["objective"], "train": {k: v for k, v in cfg["train"].items()
                                                                     if k not in ("log_every", "checkpoint_every")}})
        cache = Path(cfg["paths"]["workdir"]) / "splits" / key / "split.json"
        if cache.exists():
            self.split_result = json.loads(cache.read_text())
        else:
            self.split_result = compute_split(cfg, datasets=datasets, tracker=tracker, parent_id=parent_id)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(self.split_result))
        self.boundaries = list(self.split_result["boundaries"])

    def units(self) -> dict[str, UnitSpec]:
        if self.boundaries is None:
            raise RuntimeError("CBS.units() before prepare(): the boundaries come from the aux model")
        if self.training == "joint" and self.n > 1:
            return joint_unit(self.cfg, self.boundaries, self.budget)
        return split_units(self.cfg, self.boundaries, self.budget)

    def assemble(self, parts) -> Field:
        if "experts" in parts:  # joint training (Alg. 1 in one loop): TimeExperts routes by t itself
            return net_field(parts["experts"])
        if self.n == 1:
            return net_field(parts["expert0"])
        return Piecewise([net_field(parts[f"expert{i}"]) for i in range(self.n)], self.boundaries)

    def describe(self) -> dict:
        out = {"boundaries": self.boundaries, "budget": self.budget, "monitor": self.monitor, "training": self.training}
        if self.split_result:
            out.update(split_field=self.split_result["field"], aux_unit=self.split_result["aux_unit"],
                       monitor_cost=self.split_result["cost"])
        return out
