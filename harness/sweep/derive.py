"""Sweep derivers: cells computed from a quantity the sweep must derive first.

A deriver is ``@register("sweep_deriver", NAME)`` on a function ``(base_cfg, **params, dry_run) ->
[(overrides, label), ...]`` (with ``dry_run`` it must train nothing), registered in the file of
the method it belongs to (``cbs_boundary_perturb`` in ``methods/cbs.py``: seed 000 Tab. 5); the
sweep file's ``derive: {name: NAME, **params}`` calls it with the validated base config before the
cells are expanded and validated.  Its parameters are checked against its
signature like any plug-in node (one-line ConfigError naming ``derive.KEY``).
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Mapping

from harness.config.schema import check_kwargs
from harness.core.errors import ConfigError
from harness.core.registry import get

Derived = list[tuple[dict[str, str], dict[str, Any]]]


def derive_cells(node: Mapping[str, Any], base_cfg: Mapping[str, Any], *, dry_run: bool = False) -> Derived:
    """Run the deriver a sweep file's ``derive:`` node names, after checking its parameters."""
    if "name" not in node:
        raise ConfigError("derive.name: missing", hint="e.g. derive: {name: cbs_boundary_perturb, deltas: [-0.05, 0.05]}")
    fn = get("sweep_deriver", node["name"])
    sig = inspect.signature(fn)
    params = {k: p for k, p in list(sig.parameters.items())[1:] if p.kind != p.KEYWORD_ONLY}
    kwargs = {k: v for k, v in node.items() if k != "name"}
    check_kwargs("derive", kwargs, params, typing.get_type_hints(fn))
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"derive.{missing[0]}: a value is required for {node['name']!r}")
    return fn(base_cfg, **kwargs, dry_run=dry_run)
