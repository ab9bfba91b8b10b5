"""The method plug-in protocol: which units a method needs and how it assembles its Field.

A method is one file plus one config (STYLE practice 2): ``@register("method", NAME)`` on
a :class:`Method` subclass in ``methods/`` or ``baselines/``, and
``harness/conf/method/NAME.yaml``.  The engine never branches on a method's name: what it
needs to know about a method (whether its units wait on :meth:`Method.prepare`, what to count
before that, how many time intervals it has) it asks through this protocol.  A method may also
register its own sweep derivers (``sweep_deriver``) and config nodes (``config_node``) in its file.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.field.base import Field, Net
from harness.train.units import UnitSpec


class Method:
    """Base class.  ``cfg`` is the whole validated config (plain dict); ``cfg['method']`` its own node."""

    time_experts: Optional[int] = None  # intervals of the time axis (1: one network for every t); None: not a time split

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.options = {k: v for k, v in cfg["method"].items() if k != "name"}

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        """Cross-key invariants beyond types (raise ConfigError naming the key)."""

    def needs_prepare(self) -> bool:
        """True while :meth:`units` cannot answer because it depends on :meth:`prepare`'s work (CBS's aux
        model decides the boundaries, DDM's clustering the experts' data).  A sweep then plans a prepare task."""
        return False

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Work that decides the units (e.g. CBS's aux model and boundaries); runs before :meth:`units`."""

    def stand_in(self) -> "Method":
        """A method whose units have the shapes the prepared method's will have, usable before :meth:`prepare`
        (parameter and FLOP counts, meta-device assembly).  The default is the method itself."""
        return self

    def units(self) -> dict[str, UnitSpec]:
        """Units to train, by role; roles are the keys :meth:`assemble` receives."""
        raise NotImplementedError

    def assemble(self, parts: Mapping[str, tuple[torch.nn.Module, Any]]) -> Field:
        """Build the sampling field from trained (model, objective) pairs by role."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Method-specific facts for the record (e.g. boundaries)."""
        return {}

    @classmethod
    def sampled_objective(cls, cfg) -> Mapping[str, Any]:
        """The objective node of the network(s) the sampler walks, for samplers that need a native
        parameterisation (``sampler=ddpm`` needs eps).  The run's ``objective`` unless a method samples
        another unit (objective_switch's ``use: ddpm``)."""
        return cfg["objective"]


def net_field(part: tuple[torch.nn.Module, Any]) -> Net:
    """A (model, objective) part as a one-network velocity field."""
    model, objective = part
    return Net(model, objective)
