"""Run one experiment: train the method's units, assemble its Field, sample, score, record.

The DAG is small (DESIGN.md): units are independent, then assembly, then evaluation.
Finished units are reused by content hash; an interrupted unit resumes from its last
good checkpoint into the same MLflow child run; a re-run of the same command resumes the
same MLflow parent run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from harness.registry import get
from harness.units import UnitSpec, content_hash, done_record


def method_for(cfg: Mapping[str, Any], *, prepare: bool = True, datasets=None, tracker=None, parent_id: Optional[str] = None):
    """The configured method, prepared (its units decided) unless ``prepare=False``."""
    node = cfg["method"]
    method = get("method", node["name"])(cfg, **{k: v for k, v in node.items() if k != "name"})
    if prepare:
        method.prepare(datasets=datasets, tracker=tracker, parent_id=parent_id)
    return method


class DatasetCache:
    """Datasets by content hash of their node, so units sharing data load it once."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def get(self, node: Mapping[str, Any]):
        from harness.data.base import build_dataset

        key = content_hash(dict(node))
        if key not in self._items:
            self._items[key] = build_dataset(dict(node))
        return self._items[key]


def _run_record(path: Path, tracker, name: str, *, parent_id: Optional[str], tags: Mapping[str, str],
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


def train_units(units: Mapping[str, UnitSpec], cfg: Mapping[str, Any], *, tracker=None, parent_id: Optional[str] = None,
                datasets: Optional[DatasetCache] = None) -> dict[str, Any]:
    """Train (or reuse) every unit; returns counts of trained and reused units."""
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
        dataset = datasets.get(spec.data)
        run_id = None
        if tracker is not None:
            tags = {"harness.kind": "unit", "harness.unit_hash": spec.hash, "harness.role": role, **git_info()}
            run_id = _run_record(unit_dir / "mlflow_run.json", tracker, f"unit:{spec.label}", parent_id=parent_id,
                                 tags=tags, params=spec.to_dict())
        train_unit(spec, workdir=workdir, dataset=dataset, tracker=tracker, run_id=run_id,
                   progress=bool(cfg["run"]["progress"]))
        if tracker is not None:
            tracker.end_run(run_id)
        trained.append(role)
    return {"trained": trained, "reused": reused}


def assemble(cfg: Mapping[str, Any], method=None):
    """The method's Field from its finished units (EMA weights)."""
    from harness.train import load_unit_field_parts

    method = method or method_for(cfg)
    workdir = Path(cfg["paths"]["workdir"])
    parts, records = {}, {}
    for role, spec in method.units().items():
        model, objective, record = load_unit_field_parts(spec, workdir)
        parts[role] = (model, objective)
        records[role] = record
    return method.assemble(parts), records


def run_experiment(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Train, assemble, sample, evaluate and record one experiment; returns its summary."""
    from harness.evaluate.pipeline import evaluate_field
    from harness.track import Tracker, flatten, git_diff, git_info

    t0 = time.time()
    datasets = DatasetCache()
    datasets.get(cfg["data"])  # a missing dataset fails here, before anything is written
    workdir = Path(cfg["paths"]["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])
    exp_hash = content_hash({k: v for k, v in cfg.items() if k not in ("run", "tracking", "launcher")})
    name = cfg["run"]["name"] or f"{cfg['method']['name']}-{cfg['data']['name']}"
    tags = {"harness.kind": "experiment", "harness.method": cfg["method"]["name"], "harness.data": cfg["data"]["name"],
            "harness.experiment_hash": exp_hash, **git_info()}
    parent = _run_record(workdir / "experiments" / exp_hash / "mlflow_run.json", tracker, name, parent_id=None,
                         tags=tags, params=flatten(cfg))
    tracker.log_dict(parent, dict(cfg), "resolved_config.json")
    if cfg["tracking"]["log_git_diff"]:
        diff = git_diff()
        if diff:
            tracker.log_text(parent, diff, "git_diff.patch")
    try:
        method = method_for(cfg, datasets=datasets, tracker=tracker, parent_id=parent)
        units = method.units()
        counts = train_units(units, cfg, tracker=tracker, parent_id=parent, datasets=datasets)
        field, records = assemble(cfg, method)
        tracker.log_dict(parent, {"units": {r: s.to_dict() for r, s in units.items()}, "method": method.describe()},
                         "units.json")
        result = evaluate_field(field, cfg, datasets=datasets, tracker=tracker, run_id=parent)
    except BaseException:
        tracker.end_run(parent, status="FAILED")
        raise
    tracker.set_tags(parent, {"harness.units_trained": len(counts["trained"]), "harness.units_reused": len(counts["reused"])})
    tracker.end_run(parent)
    return {"run_id": parent, "name": name, "method": cfg["method"]["name"], "units_trained": len(counts["trained"]),
            "units_reused": len(counts["reused"]), "seconds": round(time.time() - t0, 1), **result}
