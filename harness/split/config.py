"""The ``split`` config node: how a monitor splits the time axis (seed 000, Sec. 3.3-3.4; Sec. 4.5 for the aux model).

Registered as a plug-in node (registry kind ``config_node``) beside the monitors it names, so the
config layer validates it without knowing it exists; its defaults are ``harness/conf/split/default.yaml``.
Used by ``harness split`` and by methods that split by a monitor (CBS).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from harness.config.schema import positive
from harness.core.errors import ConfigError
from harness.core.registry import register, registry


@register("config_node", "split")
@dataclasses.dataclass
class SplitConfig:
    monitor: str = "acceleration"
    n: int = 3
    grid: int = 100
    trajectories: int = 256
    interpolate: bool = False
    field: str = "aux"
    aux_fraction: float = 0.1
    aux_steps: Optional[int] = None
    aux_backbone: Optional[dict] = None   # null = the experts' backbone; seed 000 Sec. 4.5: a smaller net suffices
    seed: int = 0

    def check(self, p: str) -> None:
        positive(p, n=self.n, grid=self.grid, trajectories=self.trajectories)
        if self.field not in ("aux", "exact"):
            raise ConfigError(f"{p}.field must be aux or exact, got {self.field!r}")
        if not 0 < self.aux_fraction <= 1:
            raise ConfigError(f"{p}.aux_fraction must be in (0, 1], got {self.aux_fraction}")
        if self.aux_steps is not None and self.aux_steps <= 0:
            raise ConfigError(f"{p}.aux_steps must be > 0 or null")
        if self.n > self.grid:
            raise ConfigError(f"{p}.n={self.n} exceeds {p}.grid={self.grid}", hint="raise split.grid")
        registry("monitor").get(self.monitor)
        if self.aux_backbone is not None:
            if not isinstance(self.aux_backbone, dict) or "name" not in self.aux_backbone:
                raise ConfigError(f"{p}.aux_backbone must be a backbone node with a name, got {self.aux_backbone!r}",
                                  hint="e.g. split.aux_backbone={name: sit, depth: 12, hidden_size: 384, num_heads: 6, "
                                       "patch_size: 2}, or null for the experts' backbone")
            registry("backbone").get(self.aux_backbone["name"])
