"""MLflow as the record: one parent run per experiment, a child per unit (DESIGN.md, Runs and records).

Uses ``MlflowClient`` with explicit run ids, never the global active run, so units in
several processes (DDP, submitit) log into the run they were given.  A fresh SQLite
store is created once under a file lock before any concurrent writer (FINDINGS: two
processes migrating a new store at once race).  An ``http(s)://`` URI is a tracking server
(README, Tracking on a cluster): it is health-checked once when the tracker is created, so a
job pointed at a server that is down fails in seconds, before it trains.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.core.errors import ConfigError

MAX_PARAM_LEN = 6000
SERVER_SCHEMES = ("http://", "https://")
HEALTH_TIMEOUT_S = 10.0
START_SERVER = ("start one (harness ui on this machine; mlflow server for a cluster, README 'Tracking on a cluster') "
                "and point MLFLOW_TRACKING_URI or tracking.uri at its http://host:port")


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
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server URI prints 2 lines per run end


class Tracker:
    """Thin wrapper over ``MlflowClient`` bound to one tracking URI and experiment."""

    def __init__(self, uri: str, experiment_name: str = "harness") -> None:
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        check_server(uri)
        ensure_store(uri)
        self.client = MlflowClient(tracking_uri=uri)
        exp = self._get_experiment(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self._create_experiment(experiment_name)

    def _get_experiment(self, name: str):
        """The named experiment or None; a server that answers /health but refuses requests is one line.

        /health is exempt from MLflow's Host-header check, so a server started without ``--allowed-hosts``
        naming the host in ``tracking.uri`` (or one wanting credentials) passes the health check and
        answers 403/401 here.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_experiment_by_name(name)
        except MlflowException as err:
            if not is_server(self.uri):
                raise
            reason = str(err).splitlines()[0][:300]
            raise ConfigError(f"tracking.uri: the MLflow server at {self.uri} refused the request: {reason}",
                              hint="a server reached by a host name needs that name in its --allowed-hosts; "
                                   "one with authentication needs MLFLOW_TRACKING_USERNAME/PASSWORD") from None

    def _create_experiment(self, name: str) -> str:
        # Artifacts live beside a SQLite store (not in ./mlruns of whatever the cwd is).
        location = None
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            location = ((db if db.is_absolute() else Path.cwd() / db).parent / "mlartifacts").as_uri()
        try:
            # a model-training experiment: MLflow 3 opens it on its runs, not on its GenAI overview
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
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

    def artifact_location(self, run_id: str, artifact_path: str) -> str:
        """Where a logged artifact lives: a local path for a file store, else its URI (``mlflow-artifacts:/...``)."""
        root = self.client.get_run(run_id).info.artifact_uri
        if root.startswith("file://"):
            root = root[len("file://"):]
        return f"{root.rstrip('/')}/{artifact_path}"

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (MLflow's REST API over HTTP), not a store this process opens."""
    return uri.startswith(SERVER_SCHEMES)


def check_server(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """ConfigError unless the tracking server at ``uri`` answers ``/health`` within ``timeout_s``; other URIs pass.

    MLflow's client retries a server that does not answer with exponential backoff for minutes
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES); one GET with a short timeout fails the job in seconds instead.
    """
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, timed out, unknown host, malformed URL
        reason = str(getattr(err, "reason", err))
    raise ConfigError(f"tracking.uri: no MLflow server answers at {uri} ({reason})", hint=START_SERVER)


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
