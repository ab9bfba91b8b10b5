"""Sweep derivers: cells computed from a quantity the sweep must derive first.

A deriver is ``@register("sweep_deriver", NAME)`` on a function ``(base_cfg, **params, dry_run) ->
[(overrides, label), ...]`` (with ``dry_run`` it must train nothing); the sweep file's ``derive: {name: NAME, **params}`` calls it with the validated base
config before the cells are expanded and validated.  Its parameters are checked against its
signature like any plug-in node (one-line ConfigError naming ``derive.KEY``).
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Mapping

from harness.errors import ConfigError
from harness.field import check_boundaries
from harness.registry import get, register
from harness.schema import check_kwargs
from harness.sweep.spec import hydra_value

Derived = list[tuple[dict[str, str], dict[str, Any]]]


def cbs_boundaries(cfg: Mapping[str, Any], *, dry_run: bool = False) -> tuple[list[float], str]:
    """CBS's boundaries for ``cfg`` (method=cbs) and where they came from.

    ``method.boundaries`` if given, else the monitor split (``harness split``'s computation, cached;
    the aux model is a content-hashed unit).  A dry run trains nothing: while the aux model is
    untrained it returns the uniform split as a stand-in, so every cell's keys can still be validated.
    """
    from harness.experiment import method_for
    from harness.split.run import aux_unit
    from harness.units import done_record

    if cfg["method"]["name"] != "cbs":
        raise ConfigError(f"derive: cbs_boundary_perturb needs method=cbs in base, got method={cfg['method']['name']}")
    if cfg["method"].get("boundaries") is not None:
        return list(cfg["method"]["boundaries"]), "method.boundaries"
    untrained = cfg["split"]["field"] == "aux" and done_record(aux_unit(cfg).directory(cfg["paths"]["workdir"])) is None
    if dry_run and untrained:
        n = int(cfg["method"]["n"])
        return [i / n for i in range(1, n)], "uniform stand-in (dry run: the aux model is not trained yet)"
    return list(method_for(cfg).boundaries), f"CBS monitor {cfg['method']['monitor']} ({cfg['split']['field']} field)"


@register("sweep_deriver", "cbs_boundary_perturb")
def cbs_boundary_perturb(cfg: Mapping[str, Any], deltas: list[float], include_base: bool = True,
                         *, dry_run: bool = False) -> Derived:
    """Seed 000, Table 5: move each CBS boundary separately by each delta; the rest stay put.

    Cells whose perturbed boundaries leave (0, 1) or stop increasing are dropped (they are not
    splits).  Unchanged boundaries keep their exact float value, so experts whose interval did not
    move have the same unit hash as in the base cell and are reused, not retrained (DESIGN.md).
    """
    if not deltas or any(d == 0 for d in deltas):
        raise ConfigError(f"derive.deltas: expected non-zero perturbations, got {deltas!r}",
                          hint="e.g. deltas: [-0.05, 0.05]; the base cell is included with include_base: true")
    base, source = cbs_boundaries(cfg, dry_run=dry_run)
    cells: Derived = []
    if include_base:
        cells.append(({"method.boundaries": hydra_value(base)}, {"boundary": "-", "delta": 0.0, "boundaries": base, "source": source}))
    for i in range(len(base)):
        for d in deltas:
            moved = list(base)
            moved[i] = round(base[i] + float(d), 10)
            try:
                check_boundaries(moved, len(base) + 1)
            except ConfigError:
                continue
            cells.append(({"method.boundaries": hydra_value(moved)},
                          {"boundary": f"b{i + 1}", "delta": float(d), "boundaries": moved}))
    return cells


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
