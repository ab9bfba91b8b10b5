"""A sweep's state on disk: one folder per cell, records written atomically, a lock while a job works.

Layout under ``<workdir>/sweeps/<name>/``::

    sweep.json                 the cells (id, overrides, delta) of the last expansion, and the sweep's MLflow run
    cells/<id>/cell.json       what the cell is
    cells/<id>/result.json     written last by the evaluate task: the cell is finished
    cells/<id>/failed.json     the last failure (stage, one-line error); removed when the cell finishes
    cells/<id>/units.json      unit hashes this sweep trained / found already trained for the cell
    cells/<id>/task-*.lock     flock-ed while a task works on the cell (a dead process releases it)
    jobs.json                  SLURM/submitit job ids per stage (for ``harness status``)

The disk, not a process, is the source of truth, so a killed driver or a requeued job loses nothing:
re-running the sweep reads these records and runs only what is unfinished (STYLE practice 9).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from harness.core.files import write_json_atomic

STATES = ("finished", "failed", "running", "pending")


def cell_dir(sweep_dir: Path, cell_id: str) -> Path:
    return Path(sweep_dir) / "cells" / cell_id


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON at ``path``, or None when absent or unreadable (a record is written atomically)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def result(sweep_dir: Path, cell_id: str) -> Optional[dict[str, Any]]:
    return read_json(cell_dir(sweep_dir, cell_id) / "result.json")


def failure(sweep_dir: Path, cell_id: str) -> Optional[dict[str, Any]]:
    return read_json(cell_dir(sweep_dir, cell_id) / "failed.json")


def record_failure(sweep_dir: Path, cell_id: str, stage: str, err: BaseException) -> None:
    text = " ".join(str(err).split()) or type(err).__name__
    write_json_atomic(cell_dir(sweep_dir, cell_id) / "failed.json",
                      {"stage": stage, "error": f"{type(err).__name__}: {text}"[:2000], "time": time.time()})


def record_result(sweep_dir: Path, cell_id: str, res: dict[str, Any]) -> None:
    d = cell_dir(sweep_dir, cell_id)
    write_json_atomic(d / "result.json", res)
    (d / "failed.json").unlink(missing_ok=True)


def record_units(sweep_dir: Path, cell_id: str, trained: list[str], reused: list[str]) -> None:
    """Accumulate (over stages and re-runs) which unit hashes were trained for this cell and which reused."""
    path = cell_dir(sweep_dir, cell_id) / "units.json"
    with locked(path.with_name("units-record.lock")):
        old = read_json(path) or {"trained": [], "reused": []}
        t = sorted(set(old["trained"]) | set(trained))
        r = sorted((set(old["reused"]) | set(reused)) - set(t))
        write_json_atomic(path, {"trained": t, "reused": r})


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """flock ``path``; yields False (and holds nothing) when ``blocking=False`` and another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (probe without waiting)."""
    if not path.exists():
        return False
    with locked(path, blocking=False) as got:
        return not got


def task_lock(sweep_dir: Path, cell_id: str, stage: str, roles: Optional[list[str]] = None) -> Path:
    """The lock a task holds while it runs: one per (stage, roles), so a cell's unit jobs run in parallel."""
    suffix = "" if stage == "evaluate" else "-" + ("-".join(roles) if roles else "all")
    return cell_dir(sweep_dir, cell_id) / f"task-{stage}{suffix}.lock"


def running_tasks(sweep_dir: Path, cell_id: str) -> list[tuple[str, str]]:
    """(stage, roles) of the cell's tasks whose lock a live process holds, e.g. ("units", "expert0"); roles "all" or ""."""
    out = []
    for p in sorted(cell_dir(sweep_dir, cell_id).glob("task-*.lock")):
        if is_locked(p):
            stage, _, roles = p.stem[len("task-"):].partition("-")
            out.append((stage, roles))
    return out


def cell_state(sweep_dir: Path, cell_id: str) -> str:
    """finished | running | failed | pending, from the records and the cell's lock."""
    d = cell_dir(sweep_dir, cell_id)
    if (d / "result.json").exists():
        return "finished"
    if any(is_locked(p) for p in d.glob("task-*.lock")):
        return "running"
    if (d / "failed.json").exists():
        return "failed"
    return "pending"


def write_sweep_record(sweep_dir: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(sweep_dir) / "sweep.json", record)
    for cell in record["cells"]:
        write_cell_record(sweep_dir, cell)


def write_cell_record(sweep_dir: Path, cell: dict[str, Any]) -> None:
    """cells/<id>/cell.json (once: a cell's id is the hash of what it is)."""
    path = cell_dir(sweep_dir, cell["id"]) / "cell.json"
    if not path.exists():
        write_json_atomic(path, cell)
