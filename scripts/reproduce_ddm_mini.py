"""Mini reproduction of seed 003's comparisons (Tab. 1 monolithic vs DDM mixing modes; Tab. 4 homo vs hetero).

Every row is one ``harness run`` on the same units (reused by content hash): the monolithic baseline,
homogeneous DDM sampled with Top-1 / Top-2 / Full mixing, heterogeneous DDM (some experts DDPM-eps,
converted at sampling time).  Two suites:

* ``fmnist``: Fashion-MNIST (unlabelled), k=3 pixel k-means clusters, ``unet_fmnist_mini`` experts,
  equal aggregate compute (monolithic 300 steps = 3 experts x 100), FD on the small CNN's features
  ("FD (smallcnn features)", never FID), 256 samples (seeds 0..255), Euler 10 steps.
* ``gmm``: the analytic 4-corner 2-D Gaussian mixture, k=4, MLP experts, fd_raw on 2000 samples.

    python scripts/reproduce_ddm_mini.py run --suite fmnist --seed 0    # -> $HARNESS_WORKDIR/results.jsonl
    python scripts/reproduce_ddm_mini.py report --suite fmnist RESULTS.jsonl [...]   # markdown table to stdout
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

FMNIST_EVAL = ["eval.n_samples=256", "sampler.steps=10"]
SUITES = {
    "fmnist": [  # eval overrides: 256 samples, Euler 10 steps (what the shared 2-core CPU allowed)
        ("monolithic", ["experiment=ddm_mono_fmnist_mini", *FMNIST_EVAL]),
        ("ddm top1", ["experiment=ddm_fmnist_mini", "method.mixing=top1", *FMNIST_EVAL]),
        ("hetero top1 (seed003 conv.)", ["experiment=hetero_ddm_fmnist_mini", "method.mixing=top1", *FMNIST_EVAL]),
        ("ddm top2", ["experiment=ddm_fmnist_mini", "method.mixing=topk", "method.top_k=2", *FMNIST_EVAL]),
        ("ddm full", ["experiment=ddm_fmnist_mini", "method.mixing=full", *FMNIST_EVAL]),
        ("hetero top1 (snr_aligned conv.)", ["experiment=hetero_ddm_fmnist_mini", "method.mixing=top1",
                                             "method.ddpm_objective.conversion=snr_aligned", *FMNIST_EVAL]),
    ],
    "gmm": [
        ("monolithic", ["experiment=ddm_mono_gmm_mini"]),
        ("ddm top1", ["experiment=ddm_gmm_mini", "method.mixing=top1"]),
        ("ddm top2", ["experiment=ddm_gmm_mini", "method.mixing=topk", "method.top_k=2"]),
        ("ddm full", ["experiment=ddm_gmm_mini", "method.mixing=full"]),
        ("hetero top1 (seed003 conv.)", ["experiment=hetero_ddm_gmm_mini", "method.mixing=top1"]),
        ("hetero top2 (seed003 conv.)", ["experiment=hetero_ddm_gmm_mini", "method.mixing=topk", "method.top_k=2"]),
        ("hetero top1 (snr_aligned conv.)", ["experiment=hetero_ddm_gmm_mini", "method.mixing=top1",
                                             "method.ddpm_objective.conversion=snr_aligned"]),
        ("hetero top1 (seed003 conv., no damping)", ["experiment=hetero_ddm_gmm_mini", "method.mixing=top1",
                                                     "method.ddpm_objective.damping=none"]),
    ],
}


def run(suite: str, seed: int) -> None:
    """Run every row of ``suite`` with ``train.seed=seed``; append one JSON line per row."""
    import torch

    from harness.config import load
    from harness.experiment import run_experiment

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # a shared 2-core box: threads only contend
    out = Path(os.environ.get("HARNESS_WORKDIR", "harness_out")) / "results.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, ovr in SUITES[suite]:
        t0 = time.time()
        res = run_experiment(load([*ovr, f"train.seed={seed}", "run.progress=false", "run.experiment_name=ddm_mini"]))
        row = {"row": name, "seed": seed, "overrides": ovr, "wall_s": round(time.time() - t0, 1),
               "units_trained": res["units_trained"], "units_reused": res["units_reused"],
               "metrics": res["metrics"], "protocol": res["protocol"]}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(name, seed, row["wall_s"], res["metrics"], flush=True)


def report(suite: str, paths: list[str]) -> str:
    """Markdown: mean +- std over seeds of the FD metric per row, and the per-seed values."""
    rows: dict[str, dict[int, float]] = defaultdict(dict)
    key = None
    for p in paths:
        for line in Path(p).read_text().splitlines():
            r = json.loads(line)
            key = key or next(k for k in r["metrics"] if k.startswith(("fd_smallcnn", "fd_raw")))
            rows[r["row"]][r["seed"]] = r["metrics"][key]
    seeds = sorted({s for v in rows.values() for s in v})
    lines = [f"| row | {key} mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for name, _ in SUITES[suite]:
        if name not in rows:
            continue
        vals = [rows[name][s] for s in seeds if s in rows[name]]
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        cells = " | ".join(f"{rows[name][s]:.3f}" if s in rows[name] else "–" for s in seeds)
        lines.append(f"| {name} | {statistics.mean(vals):.3f} ± {sd:.3f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--suite", choices=sorted(SUITES), required=True)
    r.add_argument("--seed", type=int, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--suite", choices=sorted(SUITES), required=True)
    rep.add_argument("results", nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.suite, a.seed)
    else:
        print(report(a.suite, a.results))


if __name__ == "__main__":
    main()
