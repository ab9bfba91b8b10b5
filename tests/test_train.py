"""The trainer: interval restriction, bit-identical resume after SIGKILL, DDP = one process, unit reuse."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.config import load
from harness.data.base import build_dataset
from harness.pipeline.training import train_units
from harness.objectives import build_objective
from harness.train import draw_batch, train_unit
from harness.train.checkpoint import load_checkpoint
from harness.train.units import unit_from_config

GMM = ["experiment=gmm_mini", "run.progress=false"]


def cfg_for(tmp_path, *extra):
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        return load([*GMM, *extra])
    finally:
        os.environ.pop("HARNESS_WORKDIR")


def test_interval_restricted_training_never_samples_outside(tmp_path):
    cfg = cfg_for(tmp_path, "objective=flow_matching_logit_normal")
    data = build_dataset(cfg["data"])
    obj = build_objective(cfg["objective"])
    seen = []
    for step in range(300):
        _, _, t, _ = draw_batch(data, step, seed=0, batch_size=256, interval=(0.414, 0.788), objective=obj, label_dropout=0.0)
        seen.append(t)
    t = torch.cat(seen)
    assert float(t.min()) >= 0.414 and float(t.max()) < 0.788


def test_paired_draws_differ_only_through_the_interval(tmp_path):
    cfg = cfg_for(tmp_path)
    data = build_dataset(cfg["data"])
    obj = build_objective(cfg["objective"])
    a = draw_batch(data, 7, seed=3, batch_size=64, interval=(0.0, 0.5), objective=obj, label_dropout=0.1)
    b = draw_batch(data, 7, seed=3, batch_size=64, interval=(0.0, 0.414), objective=obj, label_dropout=0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    assert torch.allclose(a[2] / 0.5, b[2] / 0.414, atol=1e-6)


def _train_cmd(workdir, steps):
    exe = Path(sys.executable).with_name("harness")
    return [str(exe), "train", *GMM, f"train.steps={steps}", "train.checkpoint_every=100", "--no-track"], \
        dict(os.environ, HARNESS_WORKDIR=str(workdir), OMP_NUM_THREADS="1")


def _final(workdir):
    unit = next((Path(workdir) / "units").iterdir())
    done = json.loads((unit / "done.json").read_text())
    return load_checkpoint(unit / done["checkpoint"])


def _assert_equal_state(a, b):
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for pid in sa:
        for k in sa[pid]:
            assert torch.equal(sa[pid][k], sb[pid][k])


def test_sigkill_then_rerun_gives_bit_identical_weights(tmp_path):
    steps = 3000
    cmd, env = _train_cmd(tmp_path / "ref", steps)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _train_cmd(tmp_path / "killed", steps)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "killed").glob("units/*/ckpt_*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    unit = next((tmp_path / "killed" / "units").iterdir())
    assert not (unit / "done.json").exists(), "the run finished before it could be killed"
    killed_at = max(int(p.stem.split("_")[1]) for p in unit.glob("ckpt_*.json"))
    assert 0 < killed_at < steps
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    _assert_equal_state(_final(tmp_path / "ref"), _final(tmp_path / "killed"))


def _ddp_worker(rank, world, init_file, workdir, cfg):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    spec = unit_from_config(cfg, label="ddp")
    train_unit(spec, workdir=Path(workdir), progress=False)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    cfg = cfg_for(tmp_path, "train.steps=60", "train.batch_size=64", "train.checkpoint_every=30")
    torch.set_num_threads(1)
    single = train_unit(unit_from_config(cfg, label="one"), workdir=tmp_path / "one", progress=False)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two"), cfg), nprocs=2)
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert single["finished"]
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-4), name


def test_finished_unit_is_reused_and_hash_ignores_logging(tmp_path):
    cfg = cfg_for(tmp_path, "train.steps=20", "train.checkpoint_every=10")
    units = {"m": unit_from_config(cfg, label="m")}
    assert train_units(units, cfg) == {"trained": ["m"], "reused": []}
    ck = next(units["m"].directory(tmp_path).glob("ckpt_*.pt"))
    mtime = ck.stat().st_mtime_ns
    assert train_units(units, cfg) == {"trained": [], "reused": ["m"]}
    assert ck.stat().st_mtime_ns == mtime
    same = unit_from_config(cfg, label="other label", log_every=3, checkpoint_every=7)
    assert same.hash == units["m"].hash
    assert unit_from_config(cfg, label="m", lr=1e-2).hash != units["m"].hash
    assert unit_from_config(cfg, label="m", interval=(0.0, 0.5)).hash != units["m"].hash
