"""MLflow as the record: one parent run per experiment, a child per unit (DESIGN.md, Runs and records).

Uses ``MlflowClient`` with explicit run ids, never the global active run, so units in
several processes (DDP, submitit) log into the run they were given.  A fresh SQLite
store is created once under a file lock before any concurrent writer (FINDINGS: two
processes migrating a new store at once race).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.core.errors import ConfigError

MAX_PARAM_LEN = 6000


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _quiet() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    """Thin wrapper over ``MlflowClient`` bound to one tracking URI and experiment."""

    def __init__(self, uri: str, experiment_name: str = "harness") -> None:
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        ensure_store(uri)
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self._create_experiment(experiment_name)

    def _create_experiment(self, name: str) -> str:
        # Artifacts live beside a SQLite store (not in ./mlruns of whatever the cwd is).
        location = None
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            location = ((db if db.is_absolute() else Path.cwd() / db).parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(self, name: str, *, parent_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
                  params: Optional[Mapping[str, Any]] = None) -> str:
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def resume_run(self, run_id: str) -> bool:
        """Mark an existing run as running again (a resumed unit logs into the same run)."""
        try:
            self.client.update_run(run_id, status="RUNNING")
            return True
        except Exception:
            return False

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        batch = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, obj, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: Path | str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def ensure_store(uri: str) -> None:
    """Create a SQLite store once, under an exclusive lock, before concurrent writers touch it."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if not db.is_absolute():
        db = Path.cwd() / db
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"tracking.uri: cannot create {db.parent}: {err.strerror}") from None
    import mlflow  # noqa: F401  (configures its loggers on import; quiet them after)

    _quiet()
    lock = db.with_name(db.name + ".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_temp_json(obj: Any, name: str) -> Path:
    path = Path(tempfile.mkdtemp()) / name
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    return path
