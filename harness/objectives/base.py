"""The objective protocol: a training loss and the map from network output to velocity.

Inside the harness every field speaks one convention (DESIGN.md): linear
interpolant ``x_t = t x1 + (1 - t) x0``, t = 0 noise, t = 1 data, velocity
``v = x1 - x0``.  Objectives with other conventions (DDPM epsilon, JiT
x-prediction) convert here, once, and nowhere else (STYLE practice 12).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch

from harness.core.errors import ConfigError
from harness.core.registry import get, suggest

NetFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample times (B,) to broadcast against x (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


class Objective:
    """Base class; subclasses implement :meth:`loss` and :meth:`velocity`."""

    def __init__(self, time_sampler: str = "uniform", time_sampler_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        self.time_sampler = get("time_sampler", time_sampler)(**dict(time_sampler_kwargs or {}))

    def sample_t(self, u: torch.Tensor, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Training times (B,) from uniform draws u (B,), restricted to ``interval``."""
        return self.time_sampler(u, interval)

    def loss(self, net: NetFn, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,) for data x1, noise x0 and harness times t."""
        raise NotImplementedError

    def velocity(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """Harness velocity dx/dt at (x, t) from the network's raw output."""
        raise NotImplementedError


def build_objective(cfg: Mapping[str, Any]) -> Objective:
    """Instantiate ``objective`` config ``{name: ..., **kwargs}`` from the registry."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise ConfigError("objective.name is missing", hint="e.g. objective=flow_matching")
    cls = get("objective", name)
    try:
        return cls(**cfg)
    except TypeError as err:
        import inspect

        params = [p for p in inspect.signature(cls).parameters]
        bad = [k for k in cfg if k not in params]
        if bad:
            raise ConfigError(f"objective.{bad[0]}: unknown key for objective {name!r}.{suggest(bad[0], params)}") from None
        raise
