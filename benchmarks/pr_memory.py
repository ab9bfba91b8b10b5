"""Precision/recall (Kynkaanniemi et al. 2019, k=3) at 50K x 2048: peak memory and wall time (issue 14, item 5).

Each case runs in a fresh subprocess.  The child draws its random float64 features (what the
extractors return), reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, runs the metric, and reads
it again: the delta is the metric's own peak resident memory beyond its inputs (ru_maxrss, not
tracemalloc, which does not see torch's allocator); a 64-point warm-up call first keeps one-time
library buffers out of it.  ``chunked`` is ``harness.evaluate.metrics.
precision_recall``; ``dense`` is the n x n float64 implementation it replaced, copied below, run
side by side with the chunked one at ``--dense-n`` (its three n x n matrices are ~20 GB each at 50K).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pr_memory.py --n 10000 20000 50000 --dense-n 5000 10000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


# Copied from harness.evaluate.metrics as it was before issue 14 chunked it (the dense baseline).
def _pairwise_sq(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    bb = (b**2).sum(1)
    for i in range(0, len(a), chunk):
        x = a[i:i + chunk]
        out[i:i + chunk] = np.maximum((x**2).sum(1)[:, None] + bb[None] - 2 * x @ b.T, 0)
    return out


def dense_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(f):
        d = _pairwise_sq(f, f)
        return np.sqrt(np.partition(d, k, axis=1)[:, k])

    r_real, r_fake = radii(real), radii(fake)
    d = np.sqrt(_pairwise_sq(fake, real))
    return float((d <= r_real[None, :]).any(1).mean()), float((d.T <= r_fake[None, :]).any(1).mean())


def child(impl: str, n: int, d: int, batch: int) -> dict:
    """One case, measured in this process: peak RSS growth (MiB) and seconds of the metric alone."""
    import torch

    from harness.evaluate.metrics import precision_recall

    fn = dense_precision_recall if impl == "dense" else lambda a, b: precision_recall(a, b, batch=batch)
    rng = np.random.default_rng(0)
    fn(rng.standard_normal((64, d)), rng.standard_normal((64, d)))   # warm-up: one-time library buffers are not the metric's
    real = rng.standard_normal((n, d))
    fake = rng.standard_normal((n, d)) * 1.02 + 0.01
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    p, r = fn(real, fake)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before   # KiB on Linux
    return {"impl": impl, "n": n, "d": d, "seconds": seconds, "peak_mib": peak / 1024, "precision": p, "recall": r,
            "inputs_mib": 2 * real.nbytes / 2**20, "threads": torch.get_num_threads()}


def run_case(impl: str, n: int, d: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(n), str(d), str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 20000])
    ap.add_argument("--dense-n", type=int, nargs="*", default=[5000])
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, n, d, batch = args.child
        print(json.dumps(child(impl, int(n), int(d), int(batch))))
        return
    cases = [(impl, n) for n in args.dense_n for impl in ("dense", "chunked")]
    cases += [("chunked", n) for n in args.n if n not in args.dense_n]
    rows = []
    print(f"{'impl':8} {'n':>6} {'d':>5} {'inputs MiB':>10} {'peak delta MiB':>14} {'seconds':>8}  precision  recall  threads")
    for impl, n in cases:
        row = run_case(impl, n, args.d, args.batch)
        rows.append(row)
        print(f"{impl:8} {n:6d} {args.d:5d} {row['inputs_mib']:10.0f} {row['peak_mib']:14.0f} {row['seconds']:8.1f}"
              f"  {row['precision']:.5f}  {row['recall']:.5f}  {row['threads']}", flush=True)
    for n in args.dense_n:
        dense, chunked = (next(r for r in rows if r["impl"] == i and r["n"] == n) for i in ("dense", "chunked"))
        same = (dense["precision"], dense["recall"]) == (chunked["precision"], chunked["recall"])
        print(f"n={n}: chunked/dense peak memory {chunked['peak_mib'] / dense['peak_mib']:.3f}, "
              f"time {chunked['seconds'] / dense['seconds']:.3f}, same precision/recall: {same}")


if __name__ == "__main__":
    main()
