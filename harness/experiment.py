"""Run one experiment: train the method's units, assemble its Field, sample, score, record.

The DAG is small (DESIGN.md): units are independent, then assembly, then evaluation.
Finished units are reused by content hash; an interrupted unit resumes from its last
good checkpoint into the same MLflow child run; a re-run of the same command resumes the
same MLflow parent run.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

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


@contextlib.contextmanager
def _unit_lock(unit_dir: Path) -> Iterator[None]:
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
        with _unit_lock(unit_dir):  # a concurrent job (sweep cells sharing a unit) may be training it
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


def experiment_units(cfg: Mapping[str, Any], method) -> dict[str, UnitSpec]:
    """The method's units plus the guidance's (AutoGuidance's weak model), all trained by train_units."""
    from harness.guidance import build_guidance

    return {**method.units(), **build_guidance(cfg).units()}


def assemble(cfg: Mapping[str, Any], method=None):
    """The method's Field from its finished units (EMA weights), wrapped by the configured guidance."""
    from harness.guidance import build_guidance
    from harness.train import load_unit_field_parts

    method = method or method_for(cfg)
    guidance = build_guidance(cfg)
    workdir = Path(cfg["paths"]["workdir"])
    parts, records = {}, {}
    method_units = method.units()
    for role, spec in {**method_units, **guidance.units()}.items():
        model, objective, record = load_unit_field_parts(spec, workdir)
        parts[role] = (model, objective)
        records[role] = record
    field = method.assemble({r: p for r, p in parts.items() if r in method_units})
    num_classes = max((int(r["num_classes"]) for r in records.values()), default=0)
    return guidance.wrap(field, parts, num_classes), records


def log_cost(cfg: Mapping[str, Any], method, tracker, run_id: str) -> dict[str, Any]:
    """Log ``gflops_per_nfe`` / ``gflops_per_image`` (torch's 2 FLOPs per multiply-add, counted on the meta device).

    Seed 004's convention (linear/conv multiply-adds only) is logged beside them with a ``_seed004``
    suffix.  A backbone whose forward cannot run on the meta device (data-dependent shapes) gets a
    tag saying so instead of a number: a missing count is never a guessed one.
    """
    from harness.guidance_cost import config_cost

    try:
        cost = config_cost(cfg, method)
    except Exception as err:  # noqa: BLE001 - counting must never fail the experiment it describes
        tracker.set_tags(run_id, {"harness.gflops_error": f"{type(err).__name__}: {err}"[:500]})
        return {}
    metrics = {"gflops_per_nfe": cost["gflops_per_nfe_torch"], "gflops_per_image": cost["gflops_per_image_torch"],
               "gflops_per_nfe_seed004": cost["gflops_per_nfe_seed004"],
               "gflops_per_image_seed004": cost["gflops_per_image_seed004"]}
    tracker.log_metrics(run_id, metrics)
    return metrics


def run_experiment(cfg: Mapping[str, Any], *, parent_id: Optional[str] = None,
                   tags: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Train, assemble, sample, evaluate and record one experiment; returns its summary.

    ``parent_id``/``tags``: a sweep nests the experiment's run under its own and tags it with the cell.
    """
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
            "harness.experiment_hash": exp_hash, **git_info(), **(tags or {})}
    parent = _run_record(workdir / "experiments" / exp_hash / "mlflow_run.json", tracker, name, parent_id=parent_id,
                         tags=tags, params=flatten(cfg))
    tracker.log_dict(parent, dict(cfg), "resolved_config.json")
    if cfg["tracking"]["log_git_diff"]:
        diff = git_diff()
        if diff:
            tracker.log_text(parent, diff, "git_diff.patch")
    try:
        method = method_for(cfg, datasets=datasets, tracker=tracker, parent_id=parent)
        units = experiment_units(cfg, method)
        counts = train_units(units, cfg, tracker=tracker, parent_id=parent, datasets=datasets)
        field, records = assemble(cfg, method)
        from harness.guidance import build_guidance

        tracker.log_dict(parent, {"units": {r: s.to_dict() for r, s in units.items()}, "method": method.describe(),
                                  "guidance": build_guidance(cfg).describe()}, "units.json")
        result = evaluate_field(field, cfg, datasets=datasets, tracker=tracker, run_id=parent)
        result = dict(result, cost=log_cost(cfg, method, tracker, parent))
    except BaseException:
        tracker.end_run(parent, status="FAILED")
        raise
    tracker.set_tags(parent, {"harness.units_trained": len(counts["trained"]), "harness.units_reused": len(counts["reused"])})
    tracker.end_run(parent)
    return {"run_id": parent, "name": name, "method": cfg["method"]["name"], "units_trained": len(counts["trained"]),
            "units_reused": len(counts["reused"]), "seconds": round(time.time() - t0, 1), **result}
