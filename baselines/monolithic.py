"""One network for the whole time axis: the reference every split method is compared with (seed 000, Tab. 1)."""
from __future__ import annotations

from harness.field import Field
from harness.api.method import Method, net_field
from harness.core.registry import register
from harness.train.units import UnitSpec, unit_from_config


@register("method", "monolithic")
class Monolithic(Method):
    time_experts = 1  # one network for every t: the N = 1 row of seed 000's tables

    def __init__(self, cfg) -> None:
        super().__init__(cfg)

    def units(self) -> dict[str, UnitSpec]:
        return {"model": unit_from_config(self.cfg, label="monolithic")}

    def assemble(self, parts) -> Field:
        return net_field(parts["model"])
