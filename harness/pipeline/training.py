"""Train or reuse a set of units, one process per unit at a time, each in its own resumable MLflow run.

Finished units are reused by content hash (``done.json`` in the unit folder); a unit another
job is training is waited for under an exclusive ``flock`` beside its folder (:func:`claim_unit`),
then reused.
An interrupted unit resumes from its last good checkpoint into the same MLflow run, whose id is
stored in the unit folder (:func:`resume_or_start_run`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from harness.core import dist
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


def end_status(err: BaseException) -> str:
    """The MLflow status of a run that ``err`` ends: KILLED when the process was asked to stop, else FAILED.

    Ctrl-C, SIGTERM and preemption reach here as KeyboardInterrupt or SystemExit (the training loop's
    ``Preempted``, the CLI's ``Terminated``, submitit's requeue exit); a re-run resumes the run either way.
    """
    return "KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED"


@contextlib.contextmanager
def claim_unit(unit_dir: Path, poll_s: float = 2.0) -> Iterator[bool]:
    """Yield False if the unit is finished, else True while this job holds the unit's lock (rank 0 holds it).

    Rank 0 polls a non-blocking flock and broadcasts what it saw each round, so while another job trains
    the unit every rank of this job waits in short, bounded collectives (no collective blocks for hours
    behind a file lock, which would trip the process group's timeout).  Single-process: the same, without
    collectives.
    """
    unit_dir.parent.mkdir(parents=True, exist_ok=True)
    fh = open(unit_dir.parent / f"{unit_dir.name}.lock", "a") if dist.is_main() else None
    try:
        while True:
            status = "done"
            if fh is not None and done_record(unit_dir) is None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    status = "done" if done_record(unit_dir) is not None else "mine"
                except BlockingIOError:
                    status = "busy"
            status = dist.broadcast(status)
            if status != "busy":
                break
            time.sleep(poll_s)
        yield status == "mine"
    finally:
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def train_units(units: Mapping[str, UnitSpec], cfg: Mapping[str, Any], *, tracker=None, parent_id: Optional[str] = None,
                datasets: Optional[DatasetCache] = None) -> dict[str, Any]:
    """Train (or reuse) every unit; returns the roles trained and reused.

    Collective under ``torch.distributed``: every rank calls it and trains each unit's DDP steps;
    rank 0 alone holds the unit's lock and its MLflow run (``tracker`` is only used there).
    """
    from harness.track import git_info
    from harness.train import train_unit

    workdir = Path(cfg["paths"]["workdir"])
    datasets = datasets or DatasetCache()
    main = dist.is_main()
    for spec in units.values():  # before any lock or run exists: every unit's batch splits over the processes
        dist.check_divides(int(spec.train["batch_size"]), "train.batch_size")
    trained, reused = [], []
    say = print if main and cfg["run"]["progress"] else None   # "unit 2/3 <label>: ..." (multi-unit methods)
    for i, (role, spec) in enumerate(units.items(), 1):
        unit_dir = spec.directory(workdir)
        position = f"unit {i}/{len(units)}" if len(units) > 1 else ""
        with claim_unit(unit_dir) as mine:  # a concurrent job (sweep cells sharing a unit) may be training it
            if not mine:
                if say:
                    say(f"{(position + ' ' + spec.label).strip()}: reused ({spec.hash})", flush=True)
                reused.append(role)
                continue
            dataset = datasets.get(spec.data)
            run_id = None
            if tracker is not None and main:
                tags = {"harness.kind": "unit", "harness.unit_hash": spec.hash, "harness.role": role, **git_info()}
                run_id = resume_or_start_run(unit_dir / "mlflow_run.json", tracker, f"unit:{spec.label}",
                                             parent_id=parent_id, tags=tags, params=spec.to_dict())
            try:
                train_unit(spec, workdir=workdir, dataset=dataset, tracker=tracker if main else None, run_id=run_id,
                           progress=bool(cfg["run"]["progress"]), position=position)
            except BaseException as err:
                if run_id is not None:
                    tracker.end_run(run_id, status=end_status(err))
                raise
            if run_id is not None:
                tracker.end_run(run_id)
        trained.append(role)
    return {"trained": trained, "reused": reused}
