"""`harness run|train|sample|eval` under torchrun: 2 gloo processes on the CPU give what 1 process gives.

The distributed path users take on a cluster, with only the device swapped: torchrun starts the
processes, `harness` joins their process group, rank 0 owns locks, MLflow and files, each rank trains
its slice of the global batch and samples the seeds r, r + N, ...  Each command runs under a timeout,
so a deadlock fails the test instead of hanging CI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.train.checkpoint import load_checkpoint

HARNESS = str(Path(sys.executable).with_name("harness"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# a labelled image setup small enough for two CPU processes: 8x8 digits, a 2-block DiT
IMAGES = ["data=digits", "backbone=dit_tiny", "backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2",
          "backbone.patch_size=2", "train.steps=24", "train.batch_size=32", "train.checkpoint_every=12",
          "eval=fd_smallcnn", "eval.n_samples=50", "eval.batch_size=16", "eval.reference_n=100", "sampler.steps=4",
          "run.progress=false"]
TIMEOUT = 600


def harness(workdir: Path, command: str, *args: str, world: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """``harness COMMAND`` with its units, caches and MLflow store in ``workdir``; under torchrun when ``world=2``."""
    where = [f"paths.workdir={workdir}", f"paths.cache={workdir / 'cache'}", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    cmd = [*(TORCHRUN + ["-m", "harness.cli"] if world == 2 else [HARNESS]), command, *where, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def unit_state(workdir: Path) -> dict[str, torch.Tensor]:
    (unit,) = [p for p in (workdir / "units").iterdir() if p.is_dir()]
    done = json.loads((unit / "done.json").read_text())
    return load_checkpoint(unit / done["checkpoint"])["model"]


def runs(workdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("harness")
    return client.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """The same experiment run by 2 processes and by 1, each in its own workdir."""
    root = tmp_path_factory.mktemp("dist")
    two, one = root / "two", root / "one"
    out2 = harness(two, "run", *IMAGES, "--json", world=2)
    out1 = harness(one, "run", *IMAGES, "--json")
    return two, one, json.loads(out2.stdout.strip().splitlines()[-1]), json.loads(out1.stdout.strip().splitlines()[-1])


def test_two_processes_train_the_weights_one_process_trains(two_and_one):
    two, one, _, _ = two_and_one
    a, b = unit_state(two), unit_state(one)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_two_processes_score_what_one_process_scores_and_log_one_parent_run(two_and_one):
    two, one, r2, r1 = two_and_one
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["metrics"].keys() == r1["metrics"].keys() and "fd_smallcnn_50" in r2["metrics"]
    for k, v in r1["metrics"].items():
        assert r2["metrics"][k] == pytest.approx(v, rel=1e-3, abs=1e-6), k
    assert r2["protocol"]["seeds"] == r1["protocol"]["seeds"] == "0..49"
    found = runs(two)
    parents = [r for r in found if r.data.tags.get("harness.kind") == "experiment"]
    units = [r for r in found if r.data.tags.get("harness.kind") == "unit"]
    assert len(parents) == 1 and parents[0].data.params["dist.world_size"] == "2"
    assert len(units) == 1 and units[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert parents[0].info.status == "FINISHED"


def test_two_processes_sample_the_npz_one_process_samples(two_and_one):
    two, _, _, _ = two_and_one
    harness(two, "sample", *IMAGES, "--out", str(two / "s2.npz"), world=2)
    harness(two, "sample", *IMAGES, "--out", str(two / "s1.npz"))
    with np.load(two / "s2.npz") as a, np.load(two / "s1.npz") as b:
        assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == b["arr_0"].shape == (50, 8, 8, 1)
        assert np.array_equal(a["arr_1"], b["arr_1"])                  # labels: same seeds, same order
        diff = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
        assert diff.max() <= 1                                         # batched-kernel rounding at most
    assert not list(two.glob(".s2.npz.*"))                            # the per-rank shares are gone
    out2 = harness(two, "eval", *IMAGES, world=2)
    out1 = harness(two, "eval", *IMAGES)
    m2, m1 = (json.loads(o.stdout[o.stdout.index("{"):])["metrics"] for o in (out2, out1))
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-7), k


def test_joint_cbs_trains_under_ddp(tmp_path):
    """CBS under torchrun: the aux unit trains on both ranks and the monitor gives both the same boundaries (the
    joint unit's hash carries them); Alg. 1 in one loop then steps one expert per batch, which DDP must tolerate
    (experts without gradient).  2 processes give the units 1 process gives."""
    gmm = ["experiment=gmm_mini", "method=cbs", "method.n=2", "method.training=joint", "train.steps=20",
           "split.aux_steps=20", "split.trajectories=64", "split.grid=20",
           "train.batch_size=32", "train.checkpoint_every=10", "run.progress=false"]
    harness(tmp_path / "two", "train", *gmm, "--no-track", world=2)
    harness(tmp_path / "one", "train", *gmm, "--no-track")
    units = {w: sorted(p.name for p in (tmp_path / w / "units").iterdir() if p.is_dir()) for w in ("two", "one")}
    assert units["two"] == units["one"] and len(units["one"]) == 2, units   # same aux and joint unit hashes
    for name in units["one"]:
        a, b = (load_checkpoint(tmp_path / w / "units" / name /
                                json.loads((tmp_path / w / "units" / name / "done.json").read_text())["checkpoint"])["model"]
                for w in ("two", "one"))
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), (name, key)


def test_a_world_size_that_does_not_divide_the_batch_is_one_line_and_writes_nothing(tmp_path):
    out = harness(tmp_path, "run", "experiment=gmm_mini", "train.batch_size=33", "run.progress=false", world=2, check=False)
    assert out.returncode != 0
    assert "error: train.batch_size=33 is not divisible by the 2 processes of this job" in out.stderr
    assert not (tmp_path / "units").exists() and not (tmp_path / "mlflow.db").exists()
