"""What a sweep job runs: prepare a cell's method, train units, or evaluate the cell.

One callable, :class:`SweepTask`, for every stage of the DAG (DESIGN.md: aux -> experts -> evaluate),
so every launcher (in-process, local subprocesses, SLURM arrays) runs the same code.  It is a
submitit ``Checkpointable``: on timeout or preemption submitit calls :meth:`checkpoint`, which
resubmits the same call; the re-run resumes each unit from its last atomic checkpoint into the
same MLflow run (the run id is stored in the unit folder) and skips finished work, so requeue
needs no state of its own (STYLE practice 6, as hydra's submitit launcher's ``checkpoint()``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional, Sequence

try:  # submitit is a dependency; the base class only adds the requeue hook
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[misc,assignment]

from harness.config import load
from harness.core import dist
from harness.pipeline.assemble import experiment_units, method_for
from harness.pipeline.experiment import run_experiment
from harness.pipeline.training import train_units
from harness.sweep import state
from harness.sweep.results import export_cell
from harness.train.units import done_record

STAGES = ("prepare", "units", "evaluate")


def _cell_config(sweep_dir: Path, cell_id: str) -> dict[str, Any]:
    cell = state.read_json(state.cell_dir(sweep_dir, cell_id) / "cell.json")
    if cell is None:
        raise FileNotFoundError(f"{state.cell_dir(sweep_dir, cell_id)}/cell.json is missing: re-run `harness sweep`")
    return load(cell["overrides"])


def _tracker(cfg):
    """The MLflow tracker on rank 0; None on the other ranks of a multi-task job (they never log)."""
    from harness.track import Tracker

    return Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"]) if dist.is_main() else None


def prepare_cell(sweep_dir: Path, cell_id: str, sweep_run_id: Optional[str] = None) -> dict[str, Any]:
    """Decide the cell's units (e.g. CBS: train/reuse the aux model, compute the boundaries; cached)."""
    cfg = _cell_config(sweep_dir, cell_id)
    method = method_for(cfg, tracker=_tracker(cfg), parent_id=sweep_run_id)
    return {"units": {role: spec.hash for role, spec in experiment_units(cfg, method).items()}}


def train_cell_units(sweep_dir: Path, cell_id: str, roles: Optional[Sequence[str]] = None,
                     sweep_run_id: Optional[str] = None) -> dict[str, Any]:
    """Train (or reuse) the cell's units ``roles`` (all when None); a unit another job trains is waited for."""
    cfg = _cell_config(sweep_dir, cell_id)
    tracker = _tracker(cfg)
    units = experiment_units(cfg, method_for(cfg, tracker=tracker, parent_id=sweep_run_id))
    chosen = {r: s for r, s in units.items() if roles is None or r in roles}
    counts = train_units(chosen, cfg, tracker=tracker, parent_id=sweep_run_id)
    trained = [chosen[r].hash for r in counts["trained"]]
    reused = [chosen[r].hash for r in counts["reused"]]
    if dist.is_main():
        state.record_units(sweep_dir, cell_id, trained, reused)
    return {"trained": trained, "reused": reused}


def evaluate_cell(sweep_dir: Path, cell_id: str, sweep_run_id: Optional[str] = None,
                  sweep_name: str = "", tags: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run the cell's experiment (its units are normally trained by now) and write its result record."""
    cfg = _cell_config(sweep_dir, cell_id)
    workdir = Path(cfg["paths"]["workdir"])
    units = experiment_units(cfg, method_for(cfg))
    missing = {spec.hash for spec in units.values() if done_record(spec.directory(workdir)) is None}
    res = run_experiment(cfg, parent_id=sweep_run_id, tags={"harness.sweep": sweep_name, "harness.cell_id": cell_id, **(tags or {})})
    trained = sorted(missing)
    record = {"cell_id": cell_id, "run_id": res["run_id"], "metrics": res.get("metrics", {}),
              "protocol": res.get("protocol", {}), "units": {r: s.hash for r, s in units.items()},
              "units_trained": res["units_trained"], "units_reused": res["units_reused"], "seconds": res["seconds"],
              "cost": res.get("cost") or {}, "method_info": res.get("method_info") or {}}   # cost: the summary's quality-vs-cost panel
    if dist.is_main():
        state.record_units(sweep_dir, cell_id, trained, [s.hash for s in units.values() if s.hash not in missing])
        state.record_result(sweep_dir, cell_id, record)
        export_cell(sweep_dir, cell_id, cfg, record)   # a reported sweep's results file grows as cells finish
    return record


class SweepTask(Checkpointable):
    """``SweepTask()(stage, sweep_dir, cell_id, ...)``: one stage of one cell, locked and recorded.

    The cell's lock is held while the task runs, so ``harness status`` sees it as running and a
    second driver does not evaluate the same cell twice; a failure is written to ``failed.json``
    (one line) and re-raised so the launcher and SLURM see the job fail.  In a multi-task SLURM job
    (``tasks_per_node`` > 1, several nodes) every task calls this: they join one process group from
    SLURM's environment, train and sample together, and rank 0 alone holds the lock and writes records.
    """

    def __call__(self, stage: str, sweep_dir: str, cell_id: str, roles: Optional[list[str]] = None,
                 sweep_run_id: Optional[str] = None, sweep_name: str = "",
                 tags: Optional[dict[str, str]] = None) -> dict[str, Any]:
        dist.init_from_env()
        sweep_dir_p = Path(sweep_dir)
        main = dist.is_main()
        lock = state.task_lock(sweep_dir_p, cell_id, stage, roles)
        with state.locked(lock) if main else contextlib.nullcontext():
            if stage == "evaluate" and dist.broadcast(state.result(sweep_dir_p, cell_id) is not None):
                return state.result(sweep_dir_p, cell_id) or {}
            try:
                if stage == "prepare":
                    return prepare_cell(sweep_dir_p, cell_id, sweep_run_id)
                if stage == "units":
                    return train_cell_units(sweep_dir_p, cell_id, roles, sweep_run_id)
                if stage == "evaluate":
                    return evaluate_cell(sweep_dir_p, cell_id, sweep_run_id, sweep_name, tags)
                raise ValueError(f"unknown sweep stage {stage!r}; expected one of {', '.join(STAGES)}")
            except Exception as err:
                if main:
                    state.record_failure(sweep_dir_p, cell_id, stage, err)
                raise
