"""The trainer: interval restriction, bit-identical resume after SIGKILL, DDP = one process, unit reuse."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


# a DiT whose forward draws random numbers while training: FFN dropout and TREAD-style token routing
RANDOM_FORWARD = ["data=digits", "backbone=dit_tiny", "backbone.hidden_size=32", "backbone.depth=3", "backbone.num_heads=2",
                  "backbone.patch_size=2", "+backbone.ffn_kwargs.dropout=0.2", "backbone.token_selector=random_route",
                  "+backbone.token_selector_kwargs.gamma=0.5", "backbone.select_blocks=[1,2]", "train.batch_size=32"]


def _train_cmd(workdir, steps, *extra, every=100):
    exe = Path(sys.executable).with_name("harness")
    return [str(exe), "train", *GMM, f"train.steps={steps}", f"train.checkpoint_every={every}", *extra, "--no-track"], \
        dict(os.environ, HARNESS_WORKDIR=str(workdir), OMP_NUM_THREADS="1")


def _final(workdir):
    unit = next(p for p in (Path(workdir) / "units").iterdir() if p.is_dir())
    done = json.loads((unit / "done.json").read_text())
    return load_checkpoint(unit / done["checkpoint"])


def _assert_equal_state(a, b):
    states = lambda c: {"model": c["model"], **({"ema": c["ema"]} if "ema" in c else {}),  # noqa: E731
                        **{f"ema {k}": v for k, v in c.get("ema_profiles", {}).items()}}
    sa_, sb_ = states(a), states(b)
    assert sa_.keys() == sb_.keys() and len(sa_) > 1   # the model and its EMA(s)
    for key in sa_:
        assert sa_[key].keys() == sb_[key].keys()
        for name in sa_[key]:
            assert torch.equal(sa_[key][name], sb_[key][name]), f"{key}.{name} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for pid in sa:
        for k in sa[pid]:
            assert torch.equal(sa[pid][k], sb[pid][k])


def _first_checkpoint_then(proc, workdir, sig):
    deadline = time.time() + 120
    while time.time() < deadline and not list(Path(workdir).glob("units/*/ckpt_*.json")):
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return next(p for p in (Path(workdir) / "units").iterdir() if p.is_dir())   # not the .lock file beside it


@pytest.mark.parametrize("steps,extra,every", [(1500, (), 100), (400, RANDOM_FORWARD, 20)],
                         ids=["mlp", "dit-dropout-routing"])
def test_sigkill_then_rerun_gives_bit_identical_weights(tmp_path, steps, extra, every):
    """Also for a forward that draws random numbers (dropout, token routing): they come from (seed, step, rank)."""
    cmd, env = _train_cmd(tmp_path / "ref", steps, *extra, every=every)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _train_cmd(tmp_path / "killed", steps, *extra, every=every)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    unit = _first_checkpoint_then(proc, tmp_path / "killed", signal.SIGKILL)
    assert not (unit / "done.json").exists(), "the run finished before it could be killed"
    killed_at = max(int(p.stem.split("_")[1]) for p in unit.glob("ckpt_*.json"))
    assert 0 < killed_at < steps
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert json.loads((unit / "done.json").read_text())["resumed_from"] == killed_at   # it started where it was killed
    _assert_equal_state(_final(tmp_path / "ref"), _final(tmp_path / "killed"))


def test_sigterm_writes_a_checkpoint_at_the_next_step_and_the_rerun_finishes_identically(tmp_path):
    """A stop signal (SLURM's SIGUSR2 before a timeout, SIGTERM) is a checkpoint, not lost steps."""
    steps = 1600
    cmd, env = _train_cmd(tmp_path / "ref", steps, every=1000)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _train_cmd(tmp_path / "stopped", steps, every=1000)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    unit = _first_checkpoint_then(proc, tmp_path / "stopped", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    stopped_at = max(int(p.stem.split("_")[1]) for p in unit.glob("ckpt_*.json"))
    assert stopped_at % 1000 != 0 and stopped_at < steps  # written because of the signal, not the cadence
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert json.loads((unit / "done.json").read_text())["resumed_from"] == stopped_at
    _assert_equal_state(_final(tmp_path / "ref"), _final(tmp_path / "stopped"))


def test_batch_gpu_rounds_train_the_weights_of_the_unsplit_batch(tmp_path):
    """EDM2's batch_gpu: accumulating 4 rounds of 16 is the 64-item batch, up to float rounding."""
    cfg = cfg_for(tmp_path, "train.steps=30", "train.batch_size=64", "train.checkpoint_every=30")
    torch.set_num_threads(1)
    train_unit(unit_from_config(cfg, label="whole"), workdir=tmp_path / "whole", progress=False)
    train_unit(unit_from_config(cfg, label="rounds", batch_gpu=16), workdir=tmp_path / "rounds", progress=False)
    a, b = _final(tmp_path / "whole"), _final(tmp_path / "rounds")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-4), name


def _image_folder(root: Path, per_class: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "emu"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("source", ["digits", "image_folder"])
def test_dataloader_batches_depend_on_seed_and_step_only_not_on_workers_or_ranks(tmp_path, source):
    """Which items form step k's batch depends on (seed, k) only: for any number of DataLoader workers, and the
    two ranks' halves of a world-2 job are, concatenated, the world-1 batch (items, noise, t, dropped labels).
    On the in-memory digits and on an image folder (files decoded in the workers)."""
    from harness.train.batches import rank_batches

    extra = ["data=digits"] if source == "digits" else \
        ["data=image_folder", f"data.root={_image_folder(tmp_path / 'imgs')}", "data.resolution=8"]
    cfg = cfg_for(tmp_path, *extra)
    data = build_dataset(cfg["data"])
    obj = build_objective(cfg["objective"])
    common = dict(seed=5, batch_size=32, interval=(0.0, 1.0), objective=obj, label_dropout=0.3, start=3, end=9)
    halves = {}
    for rank in (0, 1):
        inline = list(rank_batches(data, **common, rank=rank, world=2, workers=0))
        loaded = list(rank_batches(data, **common, rank=rank, world=2, workers=2))
        assert [s for s, _ in inline] == [s for s, _ in loaded] == list(range(3, 9))
        for (_, a), (_, b) in zip(inline, loaded):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
        halves[rank] = inline
    whole = list(rank_batches(data, **common, rank=0, world=1, workers=2))
    for (_, a), (_, b), (_, w) in zip(halves[0], halves[1], whole):
        assert a[0].shape == (16, *data.shape) and not torch.equal(a[0], b[0])   # each rank its own half
        for u, v, full in zip(a, b, w):
            assert torch.equal(torch.cat([u, v]), full)


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


def test_power_ema_profiles_snapshots_and_a_post_hoc_profile_between_them(tmp_path):
    """EDM2 EMA: both tracked profiles are in the checkpoint, 8 snapshots of each, and eval.ema_std=0.07
    (never tracked) is reconstructed from them: neither profile, but between them."""
    from harness.train import load_unit_field_parts

    cfg = cfg_for(tmp_path, "train.steps=160", "train.checkpoint_every=80")
    spec = unit_from_config(cfg, label="ema")
    torch.set_num_threads(1)
    train_unit(spec, workdir=tmp_path, progress=False)
    assert len(list(spec.directory(tmp_path).glob("ema/snapshot_*.pt"))) == 8
    ck = _final(tmp_path)
    assert set(ck["ema_profiles"]) == {"0.05", "0.1"}
    load = lambda std: dict(load_unit_field_parts(spec, tmp_path, ema_std=std)[0].state_dict())  # noqa: E731
    short, long, mid, default = load(0.05), load(0.1), load(0.07), load(None)
    assert all(torch.equal(default[n], ck["ema_profiles"]["0.1"][n]) for n in default)      # the last profile
    assert all(torch.equal(short[n], ck["ema_profiles"]["0.05"][n]) for n in short)
    dist = lambda a, b: sum(float((a[n] - b[n]).pow(2).sum()) for n in a) ** 0.5  # noqa: E731
    ends = dist(short, long)
    assert ends > 0 and dist(mid, short) < ends and dist(mid, long) < ends and dist(mid, short) > 0.05 * ends


def test_a_fixed_decay_and_power_profiles_together_are_one_line():
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.ema_decay=0.999 and train.ema_std=\[0.05, 0.1\]: choose one EMA"):
        load(["train.ema_decay=0.999"])
    with pytest.raises(ConfigError, match=r"eval.ema_std: every sigma_rel must lie in \(0, 0.2886\)"):
        load(["eval.ema_std=0.5"])
    assert load(["train.ema_decay=0.9999", "train.ema_std=null"])["train"]["ema_std"] is None


def test_compile_and_activation_checkpointing_train_the_eager_weights(tmp_path):
    """train.compile and backbone.checkpointing change how a step runs, not what it computes; checkpoints hold
    the uncompiled module's keys (no ``_orig_mod.`` prefix), so either can load the other's units."""
    tiny = ["data=digits", "backbone=dit_tiny", "backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2",
            "backbone.patch_size=2", "train.steps=4", "train.batch_size=16", "train.checkpoint_every=4"]
    cfg = cfg_for(tmp_path, *tiny)
    torch.set_num_threads(1)
    states = {}
    for name, extra in (("eager", {}), ("compiled", {"compile": True})):
        spec = unit_from_config(cfg, label=name, **extra)
        train_unit(spec, workdir=tmp_path / name, progress=False)
        states[name] = _final(tmp_path / name)["model"]
    spec = unit_from_config(dict(cfg, backbone=dict(cfg["backbone"], checkpointing=True)), label="ckpt")
    train_unit(spec, workdir=tmp_path / "checkpointed", progress=False)
    states["checkpointed"] = _final(tmp_path / "checkpointed")["model"]
    for name in ("compiled", "checkpointed"):
        assert states[name].keys() == states["eager"].keys(), name
        for key in states["eager"]:
            assert torch.allclose(states[name][key], states["eager"][key], atol=1e-5, rtol=1e-4), (name, key)


# ---------------------------------------------------------------- data.hflip (seed 002's recipe)
def _asymmetric_images(n=64):
    from harness.data.base import ArrayDataset

    x = torch.zeros(n, 1, 4, 4)
    x[:, :, :, 0] = 1.0                                   # a bright left column: a flip moves it to the right
    return ArrayDataset(x, torch.arange(n) % 10, num_classes=10, name="left_column", kind="image")


def test_hflip_mirrors_half_the_batch_and_depends_only_on_seed_and_step():
    data, obj = _asymmetric_images(), build_objective({"name": "flow_matching"})
    kw = dict(seed=3, batch_size=64, interval=(0.0, 1.0), objective=obj, label_dropout=0.1)
    flipped = []
    for step in range(40):
        a = draw_batch(data, step, hflip=True, **kw)
        b = draw_batch(data, step, hflip=True, **kw)
        plain = draw_batch(data, step, **kw)
        assert all(torch.equal(u, v) for u, v in zip(a, b))                        # (seed, step) determinism
        assert all(torch.equal(u, v) for u, v in zip(a[1:], plain[1:]))           # noise, t, labels untouched
        right = a[0][:, 0, 0, -1] == 1.0
        assert torch.equal(a[0][right], plain[0][right].flip(-1)) and torch.equal(a[0][~right], plain[0][~right])
        flipped.append(right.float())
    rate = torch.cat(flipped).mean().item()
    assert abs(rate - 0.5) < 0.05                          # 2560 draws: p = 1/2 within ~4 sigma
    halves = [draw_batch(data, 5, hflip=True, rank=r, world=2, **kw)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), draw_batch(data, 5, hflip=True, **kw)[0])   # DDP ranks: slices of one batch


def test_hflip_is_a_generic_data_key_off_the_reference_and_out_of_the_hash_when_false(tmp_path):
    from harness.core.errors import ConfigError
    from harness.evaluate.pipeline import reference_node

    base = ["experiment=dense_moe_mini_fmnist"]
    cfg, on, off = load(base), load([*base, "+data.hflip=true"]), load([*base, "+data.hflip=false"])
    assert "hflip" not in reference_node(on)                  # the reference split is never flipped
    hashes = [unit_from_config(c, "model").hash for c in (cfg, on, off)]
    assert hashes[0] == hashes[2] != hashes[1]
    with pytest.raises(ConfigError, match="data.hflip"):
        load([*base, "+data.hflip=sideways"])
    with pytest.raises(ConfigError, match="data.hflip"):
        build_dataset({**cfg_for(tmp_path)["data"], "hflip": True})  # 2-D mixture: nothing to mirror


def test_hflip_batches_are_the_same_with_dataloader_workers():
    from harness.train.batches import rank_batches

    data, obj = _asymmetric_images(), build_objective({"name": "flow_matching"})
    kw = dict(seed=1, batch_size=16, interval=(0.0, 1.0), objective=obj, label_dropout=0.0, start=2, end=4,
              rank=1, world=2, hflip=True)
    inproc, loaded = list(rank_batches(data, **kw)), list(rank_batches(data, workers=1, **kw))
    for (s0, a), (s1, b) in zip(inproc, loaded):
        assert s0 == s1 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(bool((a[0][:, 0, 0, -1] == 1).any()) for _, a in inproc)   # something was flipped


class _OutOfMemoryAtForward(torch.nn.Module):
    """Stands in for a network too big for its GPU (no GPU here): its forward raises what CUDA's allocator raises."""

    def __init__(self, *, in_shape, num_classes):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, y=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_at_the_first_step_names_the_knobs_and_writes_nothing(tmp_path):
    from harness.core.errors import HarnessError
    from harness.core.registry import register, registry

    register("backbone", "oom_probe_test")(_OutOfMemoryAtForward)
    try:
        cfg = cfg_for(tmp_path, "train.steps=5", "train.batch_size=32", "train.batch_gpu=16")
        cfg = dict(cfg, backbone={"name": "oom_probe_test"})
        with pytest.raises(HarnessError) as e:
            train_unit(unit_from_config(cfg, label="oom"), workdir=tmp_path / "w", progress=False)
    finally:   # later tests that list the backbones never see it
        registry("backbone")._items.pop("oom_probe_test", None)
        registry("backbone")._origin.pop("oom_probe_test", None)
    text = f"{e.value} {getattr(e.value, 'hint', '')}"
    assert "out of memory at step 0 with 32 items per GPU in rounds of 16" in text
    assert "train.batch_gpu" in text and "backbone.checkpointing=true" in text
    files = [p for p in (tmp_path / "w").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".pt" or p.name == "done.json" or ".tmp-" in p.name], files
    for p in files:   # what is there (the progress record) is whole
        if p.suffix == ".json":
            json.loads(p.read_text())
