"""Our runs from an MLflow store as one pandas DataFrame (columns ``params.*``, ``tags.*``, ``metrics.*``).

Read-only: a store that does not exist is reported, never created (``Tracker`` would create it), and
an empty store is a one-line error that says how to fill it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from harness.core.errors import ConfigError, HarnessError

SWEEP_TAG = "harness.sweep"          # runs of one sweep carry tags.harness.sweep=<name>


class StoreError(HarnessError):
    """The MLflow store is missing, unreadable, or holds no runs of the requested kind."""


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (relative paths against the cwd), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return db if db.is_absolute() else Path.cwd() / db


def check_store(uri: str) -> None:
    """StoreError unless the store at ``uri`` exists (SQLite: the file; others: left to MLflow).

    A tracking server must answer /health: one that is down would hang the first MLflow call for minutes.
    """
    from harness.track.store import check_server

    try:
        check_server(uri)
    except ConfigError as err:
        raise StoreError(err.message, hint=err.hint) from None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise StoreError(f"tracking.uri: no MLflow store at {db}",
                         hint="run an experiment first (harness run ...) or pass tracking.uri=sqlite:////path/to/mlflow.db")


def load_runs(uri: str, *, experiment: Optional[str] = None, sweep: Optional[str] = None,
              kind: Optional[str] = "experiment") -> pd.DataFrame:
    """Runs of the store as a DataFrame, one row per run.

    ``experiment``: only runs of that MLflow experiment; ``sweep``: only runs tagged
    ``harness.sweep=<sweep>``; ``kind``: only runs tagged ``harness.kind=<kind>`` (the parent run of an
    experiment carries the metrics; unit runs carry training losses), None for all.
    """
    check_store(uri)
    from harness.track.store import _quiet

    _quiet()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        exps = client.search_experiments()
    except Exception as err:  # a file that is not an MLflow database, a schema from another version
        raise StoreError(f"tracking.uri: cannot read the MLflow store {uri}: {str(err).splitlines()[0]}") from None
    if experiment is not None:
        exps = [e for e in exps if e.name == experiment]
        if not exps:
            raise StoreError(f"no MLflow experiment named {experiment!r} in {uri}",
                             hint="see run.experiment_name of the runs, or open harness ui")
    filters = []
    if sweep is not None:
        filters.append(f"tags.`{SWEEP_TAG}` = '{sweep}'")
    if kind is not None:
        filters.append(f"tags.`harness.kind` = '{kind}'")
    runs = []
    if exps:
        token = None
        while True:
            page = client.search_runs([e.experiment_id for e in exps], " and ".join(filters), max_results=1000,
                                      page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    names = {e.experiment_id: e.name for e in exps}
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "experiment": names.get(r.info.experiment_id),
               "status": r.info.status, "start_time": r.info.start_time}
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def require_runs(df: pd.DataFrame, what: str, uri: str) -> pd.DataFrame:
    """``df`` unless it is empty: then StoreError naming what was looked for."""
    if df.empty:
        raise StoreError(f"no {what} in the MLflow store {uri}",
                         hint="run one first (harness run ...), or check tracking.uri / the sweep or experiment name")
    return df
