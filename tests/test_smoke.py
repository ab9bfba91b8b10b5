"""End to end through the console script, as a user runs it: smoke, then sample / eval / fid / list on its units."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HARNESS = str(Path(sys.executable).with_name("harness"))


def sh(args, env, cwd):
    out = subprocess.run([HARNESS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_smoke_then_sample_eval_fid(tmp_path):
    env = dict(os.environ, HARNESS_WORKDIR=str(tmp_path / "out"), COLUMNS="200")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = sh(["smoke"], env, tmp_path)
    assert "monolithic-cifar10" in out and "naive_split-cifar10" in out and "fd_smallcnn_128" in out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parents = {r.data.tags["harness.method"]: r for r in runs if r.data.tags.get("harness.kind") == "experiment"}
    assert set(parents) == {"monolithic", "naive_split"}
    assert sum(r.data.tags.get("harness.kind") == "unit" for r in runs) == 3
    for p in parents.values():
        assert p.data.metrics["fd_smallcnn_128"] > 0
        assert "samples/sample_grid.png" in {a.path for a in client.list_artifacts(p.info.run_id, "samples")}
        assert p.data.params["data.name"] == "cifar10"  # the real CIFAR-10 loader read the stand-in

    # the same config samples and scores from the reused units, nothing retrained
    split = ["experiment=smoke_cifar10", "method=naive_split", "method.n=2"]
    sh(["sample", *split, "--out", str(tmp_path / "s.npz")], env, tmp_path)
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (128, 32, 32, 3) and arr.dtype == np.uint8
    scored = json.loads(sh(["eval", *split, "--samples", str(tmp_path / "s.npz")], env, tmp_path))
    assert abs(scored["metrics"]["fd_smallcnn_128"] - parents["naive_split"].data.metrics["fd_smallcnn_128"]) < 1e-6
    fid = json.loads(sh(["fid", str(tmp_path / "s.npz"), str(tmp_path / "s.npz"), "--extractor", "smallcnn"], env, tmp_path))
    assert abs(fid["fd_smallcnn"]) < 1e-6
    listed = sh(["list"], env, tmp_path)
    assert "naive_split" in listed and "inception_v3" in listed and "smoke_cifar10" in listed
