"""A real MLflow SQLite store receives the parent run, one child per unit, params, protocol and provenance."""
import json
import os
from pathlib import Path

import pytest

from harness.cli import main


def test_run_logs_parent_and_children_to_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", "experiment=gmm_mini", "method=naive_split", "method.n=2", "train.steps=40",
            "eval.n_samples=300", "eval.reference_n=300", "run.progress=false", "run.name=track-test"]
    assert main(args) == 0
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.kind") == "experiment"]
    children = [r for r in runs if r.data.tags.get("harness.kind") == "unit"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "track-test"
    assert parent.data.params["train.steps"] == "40" and parent.data.params["method.n"] == "2"
    assert parent.data.tags["git.commit"] and parent.data.tags["git.dirty"] in ("true", "false", "unknown")
    metric = [k for k in parent.data.metrics if k.startswith("fd_raw")]
    assert metric and parent.data.metrics[metric[0]] >= 0
    assert not any(k.startswith("fid") for k in parent.data.metrics), "a raw-coordinate distance is never FID"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"resolved_config.json", "protocol.json", "units.json"} <= arts
    proto = json.loads(Path(client.download_artifacts(parent.info.run_id, "protocol.json", str(tmp_path))).read_text())
    assert proto["extractor"] == "raw" and proto["n_samples"] == 300 and proto["nfe"] == 20
    for c in children:
        assert "train_loss" in c.data.metrics
    # a second identical run trains nothing and resumes the same parent run
    assert main(args) == 0
    runs2 = client.search_runs([exp.experiment_id])
    assert len(runs2) == 3
    assert client.get_run(parent.info.run_id).data.tags["harness.units_reused"] == "2"
