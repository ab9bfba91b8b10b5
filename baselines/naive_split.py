"""N experts on uniform time intervals assembled with Piecewise: seed 000's naive split baseline.

Budget is a protocol choice recorded with the result: ``per_expert`` gives each expert
the monolithic schedule (seed 000 trains sub-networks "with the same default
hyperparameters" and compares at equal per-step inference cost); ``equal_total`` makes
the N experts share the monolithic number of steps.
"""
from __future__ import annotations

from harness.errors import ConfigError
from harness.field import Field, Piecewise, intervals_from_boundaries
from harness.method import Method, net_field
from harness.registry import register
from harness.units import UnitSpec, unit_from_config

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


@register("method", "naive_split")
class NaiveSplit(Method):
    def __init__(self, cfg, n: int = 2, budget: str = "per_expert") -> None:
        super().__init__(cfg)
        self.n, self.budget = int(n), budget
        self.boundaries = [i / self.n for i in range(1, self.n)]

    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg["method"]
        if int(m.get("n", 2)) < 1:
            raise ConfigError(f"method.n must be >= 1, got {m.get('n')}")
        if m.get("budget", "per_expert") not in BUDGETS:
            raise ConfigError(f"method.budget must be one of {', '.join(BUDGETS)}, got {m.get('budget')!r}")

    def units(self) -> dict[str, UnitSpec]:
        return split_units(self.cfg, self.boundaries, self.budget)

    def assemble(self, parts) -> Field:
        if self.n == 1:
            return net_field(parts["expert0"])
        return Piecewise([net_field(parts[f"expert{i}"]) for i in range(self.n)], self.boundaries)

    def describe(self) -> dict:
        return {"boundaries": self.boundaries, "budget": self.budget}
