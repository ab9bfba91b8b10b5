"""A sweep file read, derived and expanded into validated cells, and the sweep's MLflow parent run.

Shared by the runner (fixed cell lists) and the Optuna search (trials), so both see the same cells,
the same state folder and the same parent run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.config import load
from harness.core.errors import ConfigError
from harness.pipeline.training import resume_or_start_run
from harness.sweep.derive import derive_cells
from harness.sweep.search_spec import check_search
from harness.sweep.spec import Cell, SweepSpec, expand, read_spec, sweep_dir
from harness.track import Tracker, git_info


@dataclasses.dataclass
class Sweep:
    """A sweep file expanded into validated cells, and where its state lives."""

    spec: SweepSpec
    base_cfg: dict[str, Any]
    cells: list[Cell]
    dir: Path


def load_sweep(path: Path | str, *, dry_run: bool = False) -> Sweep:
    """Read, derive and expand a sweep file; every cell is validated (one-line ConfigError otherwise).

    ``dry_run``: derivers train nothing (see :func:`harness.sweep.derive.cbs_boundaries`).
    """
    spec = read_spec(path)
    try:
        base_cfg = load(spec.base)
    except ConfigError as err:
        if spec.derive or spec.optuna or not (spec.grid or spec.entries):
            raise ConfigError(f"{spec.path}: base: {err.one_line()}") from None
        # the base may be valid only with each cell's overrides (method.budget=... with method=cbs in
        # the cells): validate the cells, and take settings (workdir, tracking, launcher) from the first
        cells = expand(spec)
        return Sweep(spec, cells[0].cfg, cells, sweep_dir(spec, cells))
    derived = []
    if spec.derive:
        try:
            derived = derive_cells(spec.derive, base_cfg, dry_run=dry_run)
        except ConfigError as err:
            raise ConfigError(f"{spec.path}: {err.one_line()}") from None
    if spec.optuna:
        check_search(spec, base_cfg)
        cells = expand(spec, derived=derived) if (spec.grid or spec.entries or derived) else []
        return Sweep(spec, base_cfg, cells, Path(base_cfg["paths"]["workdir"]) / "sweeps" / spec.name)
    cells = expand(spec, derived=derived)
    return Sweep(spec, base_cfg, cells, sweep_dir(spec, cells))


def sweep_run(sweep: Sweep) -> str:
    """The sweep's MLflow parent run, created once and reused by every re-run of the sweep."""
    cfg = sweep.base_cfg
    tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])
    run_id = resume_or_start_run(sweep.dir / "mlflow_run.json", tracker, f"sweep:{sweep.spec.name}", parent_id=None,
                                 tags={"harness.kind": "sweep", "harness.sweep": sweep.spec.name,
                                       "harness.sweep_file": str(sweep.spec.path), **git_info()},
                                 params={"sweep.cells": len(sweep.cells), "sweep.base": " ".join(sweep.spec.base)})
    metric = sweep.spec.metric or (sweep.spec.optuna or {}).get("metric")
    if metric:   # what `harness table sweep=NAME` and `harness ui` show first (a name or a prefix, e.g. "fd")
        tracker.set_tags(run_id, {"harness.sweep_metric": metric})
    return run_id
