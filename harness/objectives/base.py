"""The objective protocol: a training loss and the map from network output to velocity.

Inside the harness every field speaks one convention (DESIGN.md): linear
interpolant ``x_t = t x1 + (1 - t) x0``, t = 0 noise, t = 1 data, velocity
``v = x1 - x0``.  Objectives with other conventions (DDPM epsilon, JiT
x-prediction) convert here, once, and nowhere else (STYLE practice 12).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import torch

from harness.core.errors import ConfigError
from harness.core.registry import get, suggest
from harness.objectives.schedules import Schedule

NetFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Parameterisation:
    """What a network answers natively, for samplers that need more than a velocity (DiT's DDPM sampler).

    ``velocity``: the harness velocity on the linear path (every objective can answer it).
    ``eps``: the noise of ``x_tau = alpha(tau) x1 + sigma(tau) eps`` on ``schedule``'s path, asked at the
    network's own time tau = 1 - t (DDPM, Ho et al. 2020; DiT/ADM's ``ModelMeanType.EPSILON``).
    """

    kind: str = "velocity"
    schedule: Optional[Schedule] = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Parameterisation):
            return NotImplemented
        spec = (lambda s: None if s is None else s.spec())
        return self.kind == other.kind and spec(self.schedule) == spec(other.schedule)

    def __hash__(self) -> int:
        return hash((self.kind, None if self.schedule is None else self.schedule.spec()))


VELOCITY = Parameterisation()


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A network's answer in its own parameterisation (``kind`` as :class:`Parameterisation`).

    ``value`` (B, C, ...) is the velocity or the eps; ``variance`` (B, C, ...) is DiT/ADM's learned-range
    output v in [-1, 1] (``learn_sigma``: the network's second C channels, interpolating log beta_t and
    log beta~_t), or None when the network has no variance channels.
    """

    kind: str
    value: torch.Tensor
    variance: Optional[torch.Tensor] = None


def split_variance(out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(prediction, variance | None): a ``learn_sigma`` network answers 2C channels for C input channels
    (DiT ``models.py``: C predicted, then C variance values; ``th.split(model_output, C, dim=1)`` in ADM)."""
    C = x.shape[1]
    if out.dim() == x.dim() and out.shape[1] == 2 * C and C > 0:
        return out[:, :C], out[:, C:]
    return out, None


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample times (B,) to broadcast against x (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


class Objective:
    """Base class; subclasses implement :meth:`loss` and :meth:`velocity` (and, for another native
    parameterisation than velocity, :attr:`parameterisation` and :meth:`predict`)."""

    parameterisation: Parameterisation = VELOCITY
    # whether the trained network answers a velocity field (False: a classifier such as DDM's router, whose
    # classes are clusters, not the data's labels: guidance's null class never counts them)
    MAKES_FIELD: bool = True
    # objective keys that change only how a trained network answers, never its weights: left out of the unit hash
    UNHASHED_KEYS: tuple[str, ...] = ()
    # keys hashed only when they differ from this default, so a key added later keeps the old units' hashes
    HASHED_UNLESS_DEFAULT: Mapping[str, Any] = {}

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

    def predict(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> Prediction:
        """The network's native answer at harness time t (see :class:`Parameterisation`); by default the velocity."""
        return Prediction("velocity", self.velocity(net, x, t, y))


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
