"""Mini reproduction of seed 002's baseline comparison (Tab. 3 at CPU scale): dense vs TC vs EC vs DiffMoE.

The four ``*_moe_mini_fmnist`` experiments (DiT width 128, depth 4, patch 4 on Fashion-MNIST 28x28;
MoE with 4 experts in blocks 1 and 3 at C_train = 1, so equal activated parameters), each trained
per seed with the same draws, sampled with seeds 0..n-1 (Euler), scored with ``fd_smallcnn``
("FD (smallcnn features)", never FID); DiffMoE also reports C_infer^avg (Eq. 15).

    python scripts/reproduce_moe_mini.py run --seed 0 [--steps 300] [--n 512]   # -> <workdir>/moe_mini/seed0.json
    python scripts/reproduce_moe_mini.py report --seeds 0 1                     # -> results/reproduced/moe_mini.md

Runs under ``HARNESS_WORKDIR`` (units are reused by content hash).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

VARIANTS = [("Dense", "dense_moe_mini_fmnist"), ("TC-MoE", "tc_moe_mini_fmnist"), ("EC-MoE", "ec_moe_mini_fmnist"),
            ("DiffMoE", "diffmoe_mini_fmnist")]
ROOT = Path(__file__).resolve().parents[1]


def out_dir() -> Path:
    return Path(os.environ.get("HARNESS_WORKDIR", "harness_out")) / "moe_mini"


def run_seed(seed: int, steps: int, n: int, batch: int) -> list[dict]:
    """Train, sample and score every variant for one seed; returns one row per variant."""
    from harness.backbones.flops import count_parameters, describe
    from harness.config import load
    from harness.experiment import run_experiment
    from harness.units import build_backbone

    rows = []
    for label, experiment in VARIANTS:
        overrides = [f"experiment={experiment}", f"train.seed={seed}", f"train.steps={steps}",
                     f"train.batch_size={batch}", f"eval.n_samples={n}", "run.progress=false"]
        cfg = load(overrides)
        t0 = time.time()
        summary = run_experiment(cfg)
        info = describe(lambda: build_backbone(cfg["backbone"], (1, 28, 28), 10), (1, 28, 28))
        fd_key = next(k for k in summary["metrics"] if k.startswith("fd_smallcnn"))
        rows.append({"variant": label, "experiment": experiment, "seed": seed, "steps": steps, "batch": batch,
                     "fd": summary["metrics"][fd_key], "fd_key": fd_key,
                     "c_infer": summary["metrics"].get("moe_c_infer_avg"), "params": info["params"],
                     "params_activated": info["params_activated"], "gmacs": info["gmacs"],
                     "nfe": summary["protocol"]["nfe"], "sampler": summary["protocol"]["sampler"],
                     "extractor_sha256": summary["protocol"].get("weights_sha256"),
                     "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = out_dir() / f"seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


def report(seeds: list[int]) -> Path:
    """Markdown table (mean and per-seed FD) with the protocol, into results/reproduced/moe_mini.md."""
    rows = [r for s in seeds for r in json.loads((out_dir() / f"seed{s}.json").read_text())]
    first = rows[0]
    lines = ["# Seed 002 mini reproduction: dense vs TC vs EC vs DiffMoE (CPU scale)", "",
             f"Protocol: Fashion-MNIST 28x28 (train split), DiT/SiT width 128, depth 4, patch 4 (49 tokens), flow "
             f"matching; MoE = 4 experts in blocks 1 and 3, C_train = 1; {first['steps']} AdamW steps at batch "
             f"{first['batch']}, lr 1e-3, EMA 0.99, label dropout 0.1; sampler {first['sampler']} (NFE {first['nfe']}), "
             f"no guidance; {first['fd_key']} = Frechet distance on the fixed-seed small-CNN features "
             "(\"FD (smallcnn features)\", **not FID**) against 1000 test images; seeds " + ", ".join(map(str, seeds)) +
             " (training seed = init, data order, noise and t draws; samples use seeds 0..n-1 in every run).", "",
             "| variant | params total (M) | activated (M) | GMACs/forward (meta, C=1) | FD per seed | FD mean | C_infer^avg |",
             "|---|---|---|---|---|---|---|"]
    for label, _ in VARIANTS:
        rs = [r for r in rows if r["variant"] == label]
        fds = [r["fd"] for r in rs]
        caps = [r["c_infer"] for r in rs if r["c_infer"] is not None]
        lines.append(f"| {label} | {rs[0]['params'] / 1e6:.3f} | {rs[0]['params_activated'] / 1e6:.3f} | "
                     f"{rs[0]['gmacs']:.4f} | {' / '.join(f'{v:.2f}' for v in fds)} | {statistics.mean(fds):.2f} | "
                     f"{' / '.join(f'{c:.3f}' for c in caps) if caps else '-'} |")
    path = ROOT / "results" / "reproduced" / "moe_mini.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--n", type=int, default=512)
    r.add_argument("--batch", type=int, default=32)
    p = sub.add_parser("report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    if args.cmd == "run":
        run_seed(args.seed, args.steps, args.n, args.batch)
    else:
        print(report(args.seeds))


if __name__ == "__main__":
    main()
