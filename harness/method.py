"""The method plug-in protocol: which units a method needs and how it assembles its Field.

A method is one file plus one config (STYLE practice 2): ``@register("method", NAME)`` on
a :class:`Method` subclass in ``methods/`` or ``baselines/``, and
``harness/conf/method/NAME.yaml``.  The engine never branches on a method's name.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.field import Field, Net
from harness.units import UnitSpec


class Method:
    """Base class.  ``cfg`` is the whole validated config (plain dict); ``cfg['method']`` its own node."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.options = {k: v for k, v in cfg["method"].items() if k != "name"}

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        """Cross-key invariants beyond types (raise ConfigError naming the key)."""

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Work that decides the units (e.g. CBS's aux model and boundaries); runs before :meth:`units`."""

    def units(self) -> dict[str, UnitSpec]:
        """Units to train, by role; roles are the keys :meth:`assemble` receives."""
        raise NotImplementedError

    def assemble(self, parts: Mapping[str, tuple[torch.nn.Module, Any]]) -> Field:
        """Build the sampling field from trained (model, objective) pairs by role."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Method-specific facts for the record (e.g. boundaries)."""
        return {}


def net_field(part: tuple[torch.nn.Module, Any]) -> Net:
    model, objective = part
    return Net(model, objective)
