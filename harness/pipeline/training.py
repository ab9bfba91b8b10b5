"""Train or reuse a set of units, one process per unit at a time, each in its own resumable MLflow run.

Finished units are reused by content hash (``done.json`` in the unit folder); a unit another
process is training is waited for under an exclusive ``flock`` beside its folder, then reused.
An interrupted unit resumes from its last good checkpoint into the same MLflow run, whose id is
stored in the unit folder (:func:`resume_or_start_run`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from harness.data.cache import DatasetCache
from harness.train.units import UnitSpec, done_record


def resume_or_start_run(path: Path, tracker, name: str, *, parent_id: Optional[str], tags: Mapping[str, str],
                        params: Optional[Mapping[str, Any]] = None) -> str:
    """Reuse the MLflow run id stored at ``path`` (resume) or start a new run and store its id."""
    if path.exists():
        run_id = json.loads(path.read_text()).get("run_id")
        if run_id and tracker.resume_run(run_id):
            return run_id
    run_id = tracker.start_run(name, parent_id=parent_id, tags=tags, params=params)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "uri": tracker.uri}))
    return run_id


@contextlib.contextmanager
def unit_lock(unit_dir: Path) -> Iterator[None]:
    """Exclusive flock beside the unit folder: one process trains a unit, others wait, then reuse it."""
    unit_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(unit_dir.parent / f"{unit_dir.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train_units(units: Mapping[str, UnitSpec], cfg: Mapping[str, Any], *, tracker=None, parent_id: Optional[str] = None,
                datasets: Optional[DatasetCache] = None) -> dict[str, Any]:
    """Train (or reuse) every unit; returns the roles trained and reused."""
    from harness.track import git_info
    from harness.train import train_unit

    workdir = Path(cfg["paths"]["workdir"])
    datasets = datasets or DatasetCache()
    trained, reused = [], []
    for role, spec in units.items():
        unit_dir = spec.directory(workdir)
        if done_record(unit_dir) is not None:
            reused.append(role)
            continue
        with unit_lock(unit_dir):  # a concurrent job (sweep cells sharing a unit) may be training it
            if done_record(unit_dir) is not None:
                reused.append(role)
                continue
            dataset = datasets.get(spec.data)
            run_id = None
            if tracker is not None:
                tags = {"harness.kind": "unit", "harness.unit_hash": spec.hash, "harness.role": role, **git_info()}
                run_id = resume_or_start_run(unit_dir / "mlflow_run.json", tracker, f"unit:{spec.label}",
                                             parent_id=parent_id, tags=tags, params=spec.to_dict())
            train_unit(spec, workdir=workdir, dataset=dataset, tracker=tracker, run_id=run_id,
                       progress=bool(cfg["run"]["progress"]))
            if tracker is not None:
                tracker.end_run(run_id)
        trained.append(role)
    return {"trained": trained, "reused": reused}
