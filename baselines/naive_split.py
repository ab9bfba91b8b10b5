"""N experts on uniform time intervals assembled with Piecewise: seed 000's naive split baseline.

Budget is a protocol choice recorded with the result: ``per_expert`` gives each expert
the monolithic schedule (seed 000 trains sub-networks "with the same default
hyperparameters" and compares at equal per-step inference cost); ``equal_total`` makes
the N experts share the monolithic number of steps.  CBS (``methods/cbs.py``) is this method
with boundaries from a monitor instead of the uniform ones.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.api.method import Method, net_field
from harness.core.errors import ConfigError
from harness.core.intervals import intervals_from_boundaries, uniform_boundaries
from harness.core.registry import register
from harness.field.base import Field, Piecewise
from harness.train.units import UnitSpec, unit_from_config

BUDGETS = ("per_expert", "equal_total")


def expert_steps(total_steps: int, n: int, budget: str) -> int:
    """Steps for each of n experts under a budget protocol."""
    return total_steps if budget == "per_expert" else max(1, total_steps // n)


def split_units(cfg, boundaries: list[float], budget: str, prefix: str = "expert") -> dict[str, UnitSpec]:
    """One unit per interval; all share train.seed, so their random draws are paired."""
    intervals = intervals_from_boundaries(boundaries)
    steps = expert_steps(int(cfg["train"]["steps"]), len(intervals), budget)
    return {f"{prefix}{i}": unit_from_config(cfg, label=f"{prefix}{i} [{a:.3f}, {b:.3f})", interval=(a, b), steps=steps)
            for i, (a, b) in enumerate(intervals)}


TRAININGS = ("independent", "joint")


def joint_unit(cfg, boundaries: list[float], budget: str) -> dict[str, UnitSpec]:
    """All experts in one unit trained as seed 000's Alg. 1 loop (one expert per batch).

    The unit's backbone is ``time_experts`` around the configured backbone and its objective
    samples t with ``per_batch_expert``; each expert is stepped on about 1/N of the batches, so
    ``per_expert`` gives the unit N x train.steps (each expert ~train.steps in expectation) and
    ``equal_total`` gives it train.steps.
    """
    n = len(boundaries) + 1
    steps = int(cfg["train"]["steps"]) * (n if budget == "per_expert" else 1)
    objective = dict(cfg["objective"])
    base, base_kwargs = objective.get("time_sampler", "uniform"), dict(objective.get("time_sampler_kwargs") or {})
    objective.update(time_sampler="per_batch_expert",
                     time_sampler_kwargs={"boundaries": list(boundaries), "base": base, "base_kwargs": base_kwargs})
    backbone = {"name": "time_experts", "expert": dict(cfg["backbone"]), "boundaries": list(boundaries)}
    spec = unit_from_config(dict(cfg, backbone=backbone, objective=objective),
                            label=f"joint experts {[round(b, 3) for b in boundaries]}", steps=steps)
    return {"experts": spec}


@register("method", "naive_split")
class NaiveSplit(Method):
    """Expert i on [i/N, (i+1)/N); subclasses decide the boundaries (:attr:`boundaries`) another way."""

    default_n = 3   # seed 000 compares N = 3 splits (Tab. 1-3); CBS inherits it

    def __init__(self, cfg, n: int = 3, budget: str = "per_expert", training: str = "independent") -> None:
        super().__init__(cfg)
        self.n, self.budget, self.training = int(n), budget, training
        self.boundaries = uniform_boundaries(self.n)

    @property
    def time_experts(self) -> int:  # type: ignore[override]
        return self.n

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        m = cfg["method"]
        if int(m.get("n", cls.default_n)) < 1:
            raise ConfigError(f"method.n must be >= 1, got {m.get('n')}")
        if m.get("budget", "per_expert") not in BUDGETS:
            raise ConfigError(f"method.budget must be one of {', '.join(BUDGETS)}, got {m.get('budget')!r}")
        if m.get("training", "independent") not in TRAININGS:
            raise ConfigError(f"method.training must be one of {', '.join(TRAININGS)}, got {m.get('training')!r}")

    def units(self) -> dict[str, UnitSpec]:
        if self.training == "joint" and self.n > 1:
            return joint_unit(self.cfg, self.boundaries, self.budget)
        return split_units(self.cfg, self.boundaries, self.budget)

    def assemble(self, parts) -> Field:
        if "experts" in parts:  # joint training: one TimeExperts module routes by t itself
            return net_field(parts["experts"])
        if self.n == 1:
            return net_field(parts["expert0"])
        return Piecewise([net_field(parts[f"expert{i}"]) for i in range(self.n)], self.boundaries)

    def describe(self) -> dict:
        return {"boundaries": self.boundaries, "budget": self.budget, "training": self.training}
