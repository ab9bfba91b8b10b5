"""``harness sweep FILE``: expand and validate every cell, plan the DAG of what is unfinished, launch it.

Order of work (nothing is submitted before every cell validates):
read the file -> validate the base -> derive (e.g. CBS boundaries, cached) -> expand and validate
every cell -> plan stages for unfinished cells only (prepare -> units, deduplicated by unit hash
across cells -> evaluate) -> launch -> summary table (+ PNG) recorded in the sweep's MLflow run.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from harness.errors import ConfigError
from harness.launch.base import Outcome, Stage, Task
from harness.sweep import state
from harness.sweep.spec import Cell, SweepSpec, expand, read_spec, sweep_dir

LAUNCHERS = ("local", "slurm", "debug")


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
    from harness.config import load
    from harness.sweep.derive import derive_cells

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
        from harness.sweep.search import check_search

        check_search(spec, base_cfg)
        cells = expand(spec, derived=derived) if (spec.grid or spec.entries or derived) else []
        return Sweep(spec, base_cfg, cells, Path(base_cfg["paths"]["workdir"]) / "sweeps" / spec.name)
    cells = expand(spec, derived=derived)
    return Sweep(spec, base_cfg, cells, sweep_dir(spec, cells))


def _units_or_none(cfg: dict[str, Any]):
    """The cell's units if they are known without running anything (CBS without boundaries: None)."""
    from harness.experiment import method_for

    try:
        return method_for(cfg, prepare=False).units()
    except RuntimeError:
        return None


def plan(sweep: Sweep, *, force: bool = False, rerun_failed: bool = False,
         sweep_run_id: Optional[str] = None) -> tuple[list[Stage], dict[str, str]]:
    """Stages for the unfinished cells, and each cell's state before this run (finished/failed/...).

    Finished cells are skipped (``force`` re-evaluates them; their units are still reused by hash);
    failed cells are skipped unless ``rerun_failed`` or ``force``; a cell another process is running
    is left to it.  A unit shared by several cells, or already trained, gets no task of its own.
    """
    from harness.units import done_record

    stages = {name: Stage(name, []) for name in ("prepare", "units", "evaluate")}
    before: dict[str, str] = {}
    seen: set[str] = set()
    sdir = str(sweep.dir)
    for cell in sweep.cells:
        st = state.cell_state(sweep.dir, cell.id)
        before[cell.id] = st
        if st == "running" or (st == "finished" and not force) or (st == "failed" and not (rerun_failed or force)):
            continue
        if force:
            (state.cell_dir(sweep.dir, cell.id) / "result.json").unlink(missing_ok=True)
        label = _short(cell)
        common = dict(sweep_dir=sdir, cell_id=cell.id, sweep_run_id=sweep_run_id, sweep_name=sweep.spec.name)
        units = _units_or_none(cell.cfg)
        if units is None:
            stages["prepare"].tasks.append(Task("prepare", label=f"{cell.id} {label}", **common))
            stages["units"].tasks.append(Task("units", label=f"{cell.id} {label}: all units", **common))
        else:
            workdir = Path(cell.cfg["paths"]["workdir"])
            for role, spec in units.items():
                if spec.hash in seen or done_record(spec.directory(workdir)) is not None:
                    continue
                seen.add(spec.hash)
                stages["units"].tasks.append(Task("units", roles=[role], label=f"unit {spec.hash} {spec.label} (cell {cell.id})",
                                                  **common))
        stages["evaluate"].tasks.append(Task("evaluate", label=f"{cell.id} {label}", **common))
    return [s for s in stages.values() if s.tasks], before


def _short(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.delta.items() if k not in ("boundaries", "source")) or "(base)"


def make_launcher(name: str, cfg: dict[str, Any], max_parallel: Optional[int]):
    """The launcher object for ``name``; a SLURM profile that does not exist fails here, before submitting."""
    from harness.launch.local import DebugLauncher, LocalLauncher

    if name not in LAUNCHERS:
        from harness.registry import suggest

        raise ConfigError(f"--launcher: unknown launcher {name!r}.{suggest(name, LAUNCHERS)} Available: {', '.join(LAUNCHERS)}")
    node = cfg.get("launcher") or {}
    if node.get("name") != name:  # --launcher overrides the config's launcher: its settings do not apply
        node = {"max_parallel": 16 if name == "slurm" else 1}
    parallel = int(max_parallel or node.get("max_parallel") or 1)
    if name == "debug":
        return DebugLauncher(parallel)
    if name == "local":
        return LocalLauncher(parallel)
    from harness.launch.slurm import SlurmLauncher

    return SlurmLauncher(profile=node.get("profile") or "local_test", max_parallel=parallel)


def sweep_run(sweep: Sweep) -> str:
    """The sweep's MLflow parent run, created once and reused by every re-run of the sweep."""
    from harness.experiment import _run_record
    from harness.track import Tracker, git_info

    cfg = sweep.base_cfg
    tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])
    return _run_record(sweep.dir / "mlflow_run.json", tracker, f"sweep:{sweep.spec.name}", parent_id=None,
                       tags={"harness.kind": "sweep", "harness.sweep": sweep.spec.name,
                             "harness.sweep_file": str(sweep.spec.path), **git_info()},
                       params={"sweep.cells": len(sweep.cells), "sweep.base": " ".join(sweep.spec.base)})


def run_sweep(path: Path | str, *, launcher: Optional[str] = None, dry_run: bool = False, detach: bool = False,
              rerun_failed: bool = False, force: bool = False, max_parallel: Optional[int] = None,
              echo=print) -> dict[str, Any]:
    """Validate, plan and launch a sweep; returns {sweep, stages, outcome, before, summary}."""
    sweep = load_sweep(path, dry_run=dry_run)
    name = launcher or sweep.base_cfg["launcher"]["name"]
    launch = make_launcher(name, sweep.base_cfg, max_parallel)
    if sweep.spec.optuna:
        from harness.sweep.search import run_search

        return run_search(sweep, launch, dry_run=dry_run, echo=echo)
    if dry_run:
        stages, before = plan(sweep, force=force, rerun_failed=rerun_failed)
        echo(f"sweep {sweep.spec.name}: {len(sweep.cells)} cell(s) valid; state dir {sweep.dir}")
        for source in sorted({str(c.delta["source"]) for c in sweep.cells if "source" in c.delta}):
            echo(f"derive: base boundaries from {source}")
        echo(launch.dry_run(stages, sweep.dir) if hasattr(launch, "dry_run") else _dag(stages))
        return {"sweep": sweep, "stages": stages, "before": before, "outcome": None}
    state.write_sweep_record(sweep.dir, {"name": sweep.spec.name, "file": str(Path(sweep.spec.path).resolve()),
                                         "cells": [c.to_dict() for c in sweep.cells]})
    run_id = sweep_run(sweep)
    if detach and name != "slurm":
        return _detach_local(sweep, path, name, rerun_failed, force, max_parallel, echo)
    stages, before = plan(sweep, force=force, rerun_failed=rerun_failed, sweep_run_id=run_id)
    echo(_dag(stages))
    outcome: Outcome = launch.run(stages, sweep.dir, detach=detach)
    if outcome.jobs:
        from harness.sweep.state import write_json_atomic

        prev = state.read_json(sweep.dir / "jobs.json") or {}
        write_json_atomic(sweep.dir / "jobs.json", {**prev, **{k: v for k, v in outcome.jobs.items()}, "launcher": name})
    if outcome.detached:
        echo(f"submitted; follow with: harness status {path}")
        return {"sweep": sweep, "stages": stages, "before": before, "outcome": outcome}
    from harness.sweep.summary import finish_summary

    summary = finish_summary(sweep, run_id, echo=echo)
    return {"sweep": sweep, "stages": stages, "before": before, "outcome": outcome, "summary": summary}


def _dag(stages: Sequence[Stage]) -> str:
    from harness.launch.base import describe_dag

    return describe_dag(list(stages))


def _detach_local(sweep: Sweep, path, name: str, rerun_failed: bool, force: bool, max_parallel, echo) -> dict[str, Any]:
    """Submit-and-exit on this machine: the same command, without --detach, in a new session."""
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--launcher", name]
    cmd += ["--rerun-failed"] * rerun_failed + ["--force"] * force
    cmd += ["--max-parallel", str(max_parallel)] if max_parallel else []
    log = sweep.dir / "driver.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ))
    (sweep.dir / "driver.pid").write_text(str(proc.pid))
    echo(f"sweep {sweep.spec.name} running in the background (pid {proc.pid}, log {log}); "
         f"follow with: harness status {path}")
    return {"sweep": sweep, "stages": [], "before": {}, "outcome": Outcome(detached=True), "pid": proc.pid}
