"""Run one experiment: train the method's units, assemble its Field, sample, score, record.

The DAG is small (DESIGN.md): units are independent, then assembly, then evaluation.
Finished units are reused by content hash; an interrupted unit resumes from its last
good checkpoint into the same MLflow child run; a re-run of the same command resumes the
same MLflow parent run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.api.guidance import build_guidance
from harness.core import dist
from harness.core.hashing import content_hash
from harness.data.cache import DatasetCache
from harness.pipeline.assemble import assemble, experiment_units, method_for
from harness.pipeline.cost import log_cost
from harness.pipeline.training import end_status, resume_or_start_run, train_units


def run_experiment(cfg: Mapping[str, Any], *, parent_id: Optional[str] = None,
                   tags: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Train, assemble, sample, evaluate and record one experiment; returns its summary (on every rank).

    ``parent_id``/``tags``: a sweep nests the experiment's run under its own and tags it with the cell.
    Collective under ``torch.distributed``: every rank trains its share of each unit's batches and
    samples its share of the seeds; rank 0 alone opens the MLflow runs, writes files and logs.
    """
    from harness.evaluate.images import check_metric_reference
    from harness.evaluate.pipeline import eval_device, evaluate_field
    from harness.track import Tracker, flatten, git_diff, git_info

    t0 = time.time()
    main, world = dist.is_main(), dist.world()
    datasets = DatasetCache()
    check_metric_reference(cfg["eval"], datasets.get(cfg["data"]))  # a missing dataset or reference fails here,
    dist.check_divides(int(cfg["train"]["batch_size"]), "train.batch_size")   # ... a world size that cannot split the
    # batch too: before anything is written
    workdir = Path(cfg["paths"]["workdir"])
    exp_hash = content_hash({k: v for k, v in cfg.items() if k not in ("run", "tracking", "launcher")})
    name = cfg["run"]["name"] or f"{cfg['method']['name']}-{cfg['data']['name']}"
    tracker, parent = None, None
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])
        tags = {"harness.kind": "experiment", "harness.method": cfg["method"]["name"], "harness.data": cfg["data"]["name"],
                "harness.experiment_hash": exp_hash, "harness.world_size": str(world), **git_info(), **(tags or {})}
        parent = resume_or_start_run(workdir / "experiments" / exp_hash / "mlflow_run.json", tracker, name,
                                     parent_id=parent_id, tags=tags, params={**flatten(cfg), "dist.world_size": world})
        tracker.log_dict(parent, dict(cfg), "resolved_config.json")
        if cfg["tracking"]["log_git_diff"]:
            diff = git_diff()
            if diff:
                tracker.log_text(parent, diff, "git_diff.patch")
    parent = dist.broadcast(parent)
    try:
        method = method_for(cfg, datasets=datasets, tracker=tracker, parent_id=parent)
        units = experiment_units(cfg, method)
        counts = train_units(units, cfg, tracker=tracker, parent_id=parent, datasets=datasets)
        field, records = assemble(cfg, method, device=eval_device(cfg))
        if main:
            tracker.log_dict(parent, {"units": {r: s.to_dict() for r, s in units.items()}, "method": method.describe(),
                                      "guidance": build_guidance(cfg).describe()}, "units.json")
        result = evaluate_field(field, cfg, datasets=datasets, tracker=tracker, run_id=parent)
        result = dict(result, cost=dist.broadcast(log_cost(cfg, method, tracker, parent) if main else None))
    except BaseException as err:
        if main:
            tracker.end_run(parent, status=end_status(err))   # KILLED when stopped by a signal or Ctrl-C
        raise
    if main:
        done_tags = {"harness.units_trained": len(counts["trained"]), "harness.units_reused": len(counts["reused"])}
        if method.time_experts is not None:  # intervals of the time axis (N of seed 000's tables), for plots vs N
            done_tags["harness.time_experts"] = method.time_experts
        tracker.set_tags(parent, done_tags)
        tracker.end_run(parent)
    return {"run_id": parent, "name": name, "method": cfg["method"]["name"], "units_trained": len(counts["trained"]),
            "units_reused": len(counts["reused"]), "seconds": round(time.time() - t0, 1), "world_size": world,
            "method_info": method.describe(), **result}


def evaluate_experiment(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``harness eval``: score an experiment whose units are trained (or imported: ``train.steps: 0``) and record it.

    The result is a run in the store like ``harness run``'s (so ``harness table --paper`` shows it beside the
    seed's number), but nothing is trained here: a unit that would need training is a one-line error.
    """
    from harness.core.errors import ConfigError
    from harness.train.loop import no_training
    from harness.train.units import done_record

    why = "harness eval scores trained units"
    workdir = Path(cfg["paths"]["workdir"])
    method = method_for(cfg, prepare=False)      # no prepare step here: it could train (CBS's aux model)
    if not method.needs_prepare():               # the whole list, before a run is opened
        untrained = [f"{role} ({spec.hash})" for role, spec in experiment_units(cfg, method).items()
                     if int(spec.train.get("steps", 1)) > 0 and done_record(spec.directory(workdir)) is None]
        if untrained:
            raise ConfigError(f"{why}, and {', '.join(untrained)} is not trained in {workdir}",
                              hint="train it first with harness run (same overrides), or score a sample npz with --samples")
    with no_training(why):                       # and whatever a prepare step or a guidance unit would train
        return run_experiment(cfg, tags={"harness.entry": "eval"})
