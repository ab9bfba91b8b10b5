"""MoE FFN overhead: training-step time of TC / EC / DiffMoE vs the dense FFN at matched activated parameters
(one expert FFN per token, the dense FFN's size; the routers and the capacity predictor come on top).

The four networks are the ``*_moe_mini_fmnist`` experiments' backbones (DiT width 128, depth 4,
patch 4 on 28x28x1: 49 tokens per image; MoE with 4 experts in blocks 1 and 3, C_train = 1),
so they activate the same parameters per token (printed).  One step = forward + backward
(flow-matching loss + the FFN's auxiliary loss) + AdamW step on a fixed random batch; the
variants are timed interleaved, ``--steps`` steps after ``--warmup`` steps, and the median of
``--repeats`` rounds is reported with its range.  On a machine shared with other jobs the
fastest round is the least disturbed one, so the ratio of minima is printed too.

    .venv/bin/python benchmarks/moe_overhead.py [--batch 32] [--steps 10] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

VARIANTS = {"dense": "dense_moe_mini_fmnist", "tc_moe": "tc_moe_mini_fmnist", "ec_moe": "ec_moe_mini_fmnist",
            "diffmoe": "diffmoe_mini_fmnist"}
SHAPE, CLASSES = (1, 28, 28), 10


def build(experiment: str, device: torch.device) -> torch.nn.Module:
    from harness.config import load
    from harness.backbones.build import build_backbone

    torch.manual_seed(0)
    return build_backbone(load([f"experiment={experiment}"])["backbone"], SHAPE, CLASSES).to(device).train()


def step_fn(model: torch.nn.Module, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(batch, *SHAPE, generator=g).to(device)
    x0 = torch.randn(batch, *SHAPE, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    y = torch.randint(CLASSES, (batch,), generator=g).to(device)
    tb = t.view(-1, 1, 1, 1)
    xt, target = tb * x1 + (1 - tb) * x0, x1 - x0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = (model(xt, t, y) - target).pow(2).mean() + model.last_aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    from harness.backbones.flops import count_parameters
    from harness.backbones.moe import activated_parameters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    models = {name: build(exp, device) for name, exp in VARIANTS.items()}
    steps = {name: step_fn(m, args.batch, device) for name, m in models.items()}
    for step in steps.values():
        timed(step, args.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved, so drift in machine load hits every variant alike
            times[name].append(timed(step, args.steps, device))
    base = statistics.median(times["dense"])
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} rounds (median, range)")
    best = min(times["dense"])
    print(f"{'ffn':8s} {'params (M)':>11s} {'activated (M)':>14s} {'ms/step':>9s} {'range':>17s} {'ratio':>6s} {'ratio of minima':>16s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:8s} {count_parameters(models[name]) / 1e6:11.3f} {activated_parameters(models[name]) / 1e6:14.3f} "
              f"{med:9.1f} {min(ts):8.1f}-{max(ts):<8.1f} {med / base:6.3f} {min(ts) / best:16.3f}")


if __name__ == "__main__":
    main()
