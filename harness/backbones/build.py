"""Instantiate a backbone node ``{name, **kwargs}`` through the registry, for data of a given shape.

The one place a backbone is built (units, the meta-device counters, ``time_experts``' inner experts),
so a wrong key is always the same one-line error naming the backbone.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from harness.core.errors import ConfigError
from harness.core.registry import get


def build_backbone(node: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Instantiate a backbone node ``{name, **kwargs}`` for data of ``in_shape`` and ``num_classes``."""
    kwargs = {k: v for k, v in node.items() if k != "name"}
    cls = get("backbone", node["name"])
    try:
        return cls(in_shape=tuple(in_shape), num_classes=int(num_classes), **kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone ({node['name']}): {err}") from None
