"""Trainer overhead: harness ``train_unit`` step time vs a bare PyTorch loop, same model and batch.

Per-step time is measured as (T(long) - T(short)) / (long - short) so construction, data
loading and the final checkpoint cancel out; harness and bare runs are interleaved and the
median of ``--repeats`` is reported.  The harness run includes everything it does in real
use: per-step seeded draws, EMA, grad clipping, MLflow logging (SQLite) and checkpoints.
Two bare loops are timed: minimal (AdamW + loss) and with the same EMA + clipping.

    .venv/bin/python benchmarks/trainer_overhead.py [--backbone unet_tiny] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def harness_time(cfg, steps: int, workdir: Path, track: bool) -> float:
    from harness.data.base import build_dataset
    from harness.track import Tracker
    from harness.train import train_unit
    from harness.train.units import unit_from_config

    data = build_dataset(cfg["data"])
    spec = unit_from_config(cfg, label="bench", steps=steps)
    tracker = Tracker(f"sqlite:///{workdir}/mlflow.db", "bench") if track else None
    run_id = tracker.start_run("bench") if tracker else None
    t0 = time.perf_counter()
    train_unit(spec, workdir=workdir, dataset=data, tracker=tracker, run_id=run_id, progress=True)
    return time.perf_counter() - t0


def bare_time(cfg, steps: int, with_ema_clip: bool) -> float:
    from harness.backbones.build import build_backbone
    from harness.data.base import build_dataset
    from harness.train.ema import PowerEMA

    data = build_dataset(cfg["data"])
    tc = cfg["train"]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_backbone(cfg["backbone"], tuple(data.shape), data.num_classes)
    ema = PowerEMA(model, tc["ema_std"])   # the harness default: EDM2's power-function profiles
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=tc["lr"])
    for step in range(1, steps + 1):
        idx = torch.randint(len(data), (tc["batch_size"],))
        x1, y = data.get_batch(idx)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1))
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        loss = (model(tb * x1 + (1 - tb) * x0, t, y) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if with_ema_clip:
            torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        opt.step()
        if with_ema_clip:
            ema.update(step)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tempfile.mktemp())
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="smoke_cifar10")
    p.add_argument("--backbone", default="unet_tiny")
    p.add_argument("--short", type=int, default=20)
    p.add_argument("--long", type=int, default=220)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    from harness.config import load

    cfg = load([f"experiment={args.experiment}", f"backbone={args.backbone}", "train.checkpoint_every=100",
                "train.log_every=50", "train.label_dropout=0.1", "eval=none", f"train.device={args.device}", "run.progress=false"])
    n = args.long - args.short
    per = {"harness": [], "bare": [], "bare+ema+clip": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            per["harness"].append((harness_time(cfg, args.long, d / "l", True) - harness_time(cfg, args.short, d / "s", True)) / n)
        per["bare"].append((bare_time(cfg, args.long, False) - bare_time(cfg, args.short, False)) / n)
        per["bare+ema+clip"].append((bare_time(cfg, args.long, True) - bare_time(cfg, args.short, True)) / n)
    med = {k: statistics.median(v) for k, v in per.items()}
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    print(f"backbone={args.backbone} batch={cfg['train']['batch_size']} device={dev} threads={torch.get_num_threads()} repeats={args.repeats}")
    for k, v in med.items():
        print(f"  {k:>14}: {1000 * v:8.2f} ms/step  (runs: {', '.join(f'{1000 * x:.2f}' for x in per[k])})")
    print(f"  ratio harness / bare          = {med['harness'] / med['bare']:.3f}")
    print(f"  ratio harness / bare+ema+clip = {med['harness'] / med['bare+ema+clip']:.3f}")


if __name__ == "__main__":
    main()
