"""``harness sweep FILE``: expand and validate every cell, plan the DAG of what is unfinished, launch it.

Order of work (nothing is submitted before every cell validates):
read the file -> validate the base -> derive (e.g. CBS boundaries, cached) -> expand and validate
every cell -> plan stages for unfinished cells only (prepare -> units, deduplicated by unit hash
across cells -> evaluate) -> launch -> summary table (+ PNG) recorded in the sweep's MLflow run.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from harness.core.errors import ConfigError
from harness.core.files import write_json_atomic
from harness.core.registry import registry, suggest
from harness.launch.base import Launcher, Outcome, Stage, Task, describe_dag
from harness.pipeline.assemble import experiment_units, method_for
from harness.pipeline.training import end_status
from harness.sweep import state
from harness.sweep.load import Sweep, load_sweep, sweep_run
from harness.sweep.progress import SweepProgress
from harness.sweep.results import (check_new_cells_join, export_cells, finished_in_results, import_cells,
                                  sweep_record_report)
from harness.sweep.search import run_search
from harness.sweep.spec import Cell
from harness.sweep.summary import finish_summary
from harness.sweep.tasks import SweepTask
from harness.track import Tracker
from harness.train.units import done_record


def _units_or_none(cfg: dict[str, Any]):
    """Every unit of the cell (the method's and the guidance's, as ``harness run`` trains them), or None when
    the method must be prepared first (its units depend on that work: CBS's aux model)."""
    method = method_for(cfg, prepare=False)
    return None if method.needs_prepare() else experiment_units(cfg, method)


def plan(sweep: Sweep, *, force: bool = False, rerun_failed: bool = False,
         sweep_run_id: Optional[str] = None, finished: frozenset[str] = frozenset()) -> tuple[list[Stage], dict[str, str]]:
    """Stages for the unfinished cells, and each cell's state before this run (finished/failed/...).

    ``finished``: ids of cells finished elsewhere (the committed results file), for a dry run that must
    not write their import into this machine's state but must show the same plan a real run makes.
    Finished cells are skipped (``force`` re-evaluates them; their units are still reused by hash);
    failed cells are skipped unless ``rerun_failed`` or ``force``; a cell another process is running
    is left to it.  A unit shared by several cells, or already trained, gets no task of its own.
    """
    stages = {name: Stage(name, []) for name in ("prepare", "units", "evaluate")}
    before: dict[str, str] = {}
    seen: set[str] = set()
    sdir = str(sweep.dir)
    for cell in sweep.cells:
        st = "finished" if cell.id in finished and not force else state.cell_state(sweep.dir, cell.id)
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


def make_launcher(name: str, cfg: dict[str, Any], max_parallel: Optional[int]) -> Launcher:
    """The launcher plug-in ``name``; a SLURM profile that does not exist fails here, before submitting."""
    launchers = registry("launcher")
    if name not in launchers:
        known = launchers.keys()
        raise ConfigError(f"--launcher: unknown launcher {name!r}.{suggest(name, known)} Available: {', '.join(known)}")
    node = cfg.get("launcher") or {}
    if node.get("name") != name:  # --launcher overrides the config's launcher: its settings do not apply
        node = {}
    cls = launchers.get(name)
    parallel = int(max_parallel or node.get("max_parallel") or cls.default_parallel)
    return cls(max_parallel=parallel, profile=node.get("profile"))


def run_sweep(path: Path | str, *, launcher: Optional[str] = None, dry_run: bool = False, detach: bool = False,
              rerun_failed: bool = False, force: bool = False, max_parallel: Optional[int] = None,
              echo=print) -> dict[str, Any]:
    """Validate, plan and launch a sweep; returns {sweep, stages, outcome, before, summary}."""
    sweep = load_sweep(path, dry_run=dry_run)
    name = launcher or sweep.base_cfg["launcher"]["name"]
    launch = make_launcher(name, sweep.base_cfg, max_parallel)
    if not dry_run:
        launch.check_submit()   # e.g. more GPUs per job than a node has: one line, before any state is written
    if sweep.spec.optuna:
        return run_search(sweep, launch, dry_run=dry_run, echo=echo)
    done = finished_in_results(sweep)
    if not force:   # new cells scored under other extractor weights than the results file's could never join it
        check_new_cells_join(sweep, done | {c.id for c in sweep.cells if state.result(sweep.dir, c.id) is not None})
    if dry_run:
        stages, before = plan(sweep, force=force, rerun_failed=rerun_failed, finished=done)
        echo(f"sweep {sweep.spec.name}: {len(sweep.cells)} cell(s) valid; state dir {sweep.dir}")
        if done and not force:
            echo(f"{len(done)} cell(s) finished in {sweep.spec.report['results']}: not run again")
        for source in sorted({str(c.delta["source"]) for c in sweep.cells if "source" in c.delta}):
            echo(f"derive: base boundaries from {source}")
        echo(launch.dry_run(stages, sweep.dir))
        return {"sweep": sweep, "stages": stages, "before": before, "outcome": None}
    state.write_sweep_record(sweep.dir, {"name": sweep.spec.name, "file": str(Path(sweep.spec.path).resolve()),
                                         "base": sweep.spec.base, "report": sweep_record_report(sweep.spec.report),
                                         "cells": [c.to_dict() for c in sweep.cells]})
    imported = import_cells(sweep)   # cells finished on another machine, from the committed results file
    if imported:
        echo(f"{imported} cell(s) finished in {sweep.spec.report['results']}: not run again")
    run_id = sweep_run(sweep)
    if detach and not launch.detaches:  # a launcher that cannot submit and exit: run the driver in the background
        return _detach_local(sweep, path, name, rerun_failed, force, max_parallel, echo)
    with _run_ends_if_interrupted(sweep, run_id):
        stages, before = plan(sweep, force=force, rerun_failed=rerun_failed, sweep_run_id=run_id)
        echo(_dag(stages))
        if detach:
            outcome: Outcome = launch.run(stages, sweep.dir, SweepTask(), detach=True)
        else:
            with _progress(sweep, stages, launch, echo) as view:
                outcome = launch.run(stages, sweep.dir, SweepTask(), watch=view.watch)
        if outcome.jobs:
            prev = state.read_json(sweep.dir / "jobs.json") or {}
            write_json_atomic(sweep.dir / "jobs.json", {**prev, **{k: v for k, v in outcome.jobs.items()}, "launcher": name})
        if outcome.detached:
            echo(f"submitted; follow with: harness status {path}")
            return {"sweep": sweep, "stages": stages, "before": before, "outcome": outcome}
        exported = export_cells(sweep)
        if exported:
            echo(f"results: {exported} (harness table --report {path} renders the report)")
        summary = finish_summary(sweep, run_id, echo=echo)
    return {"sweep": sweep, "stages": stages, "before": before, "outcome": outcome, "summary": summary}


@contextlib.contextmanager
def _run_ends_if_interrupted(sweep: Sweep, run_id: str) -> Iterator[None]:
    """End the sweep's MLflow run KILLED (SIGTERM, Ctrl-C) or FAILED when the driver stops early, not leave it RUNNING.

    By then a launcher has stopped its jobs (``harness.launch.local.Jobs``); re-running the same command
    resumes this run and the unfinished cells.
    """
    try:
        yield
    except BaseException as err:
        cfg = sweep.base_cfg
        Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"]).end_run(run_id, status=end_status(err))
        raise


def _progress(sweep: Sweep, stages: Sequence[Stage], launch: Launcher, echo) -> SweepProgress:
    """The progress view: live on a terminal when output goes to stdout (``echo`` is print), else event lines."""
    planned = {t.cell_id for st in stages for t in st.tasks}
    cell_units = {}
    for cell in sweep.cells:
        units = _units_or_none(cell.cfg) if cell.id in planned else None
        if units is not None:
            cell_units[cell.id] = {role: spec.hash for role, spec in units.items()}
    return SweepProgress(sweep, stages, cell_units=cell_units, live=None if echo is print and not launch.in_process else False,
                         echo=echo, units=not launch.in_process)


def _dag(stages: Sequence[Stage]) -> str:
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
