"""Template for a new method: copy to ``methods/<name>.py`` and ``harness/conf/method/<name>.yaml``.

A method says which units it needs (:meth:`units`) and how to assemble a Field from them
(:meth:`assemble`); the engine trains, samples, scores and records.  Files starting with
``_`` are not discovered, so this template registers nothing until copied and renamed.
Cite the seed's equation or table in the docstrings of what you implement.
"""
from __future__ import annotations

from harness.core.errors import ConfigError
from harness.field import Field, Piecewise
from harness.core.intervals import intervals_from_boundaries
from harness.api.method import Method, net_field
from harness.core.registry import register
from harness.train.units import UnitSpec, unit_from_config


@register("method", "_template")
class TemplateMethod(Method):
    """Two experts split at ``boundary`` (an example of a time-partitioned method)."""

    def __init__(self, cfg, boundary: float = 0.5) -> None:  # keyword args = the method's config keys
        super().__init__(cfg)
        self.boundary = float(boundary)

    @classmethod
    def check_config(cls, cfg) -> None:
        b = cfg["method"].get("boundary", 0.5)
        if not 0 < b < 1:
            raise ConfigError(f"method.boundary must lie in (0, 1), got {b}")

    def units(self) -> dict[str, UnitSpec]:
        return {f"expert{i}": unit_from_config(self.cfg, label=f"expert{i}", interval=iv)
                for i, iv in enumerate(intervals_from_boundaries([self.boundary]))}

    def assemble(self, parts) -> Field:
        return Piecewise([net_field(parts["expert0"]), net_field(parts["expert1"])], [self.boundary])
