"""CBS overheads (issue 4): boundary estimation vs expert training, and Piecewise vs monolithic sampling.

1. Boundary estimation cost as a fraction of expert training compute, for a config (default the mini
   setup): aux training (split.aux_steps AdamW steps on the same backbone and batch) plus the monitor
   (K trajectories on the grid), over N experts x train.steps steps.  Step time and monitor time are
   measured here, side by side, on the same model; the full-scale figure is computed from the
   configured step counts (same backbone for aux and experts, so the step time cancels).
2. Sampling step time of a Piecewise field of N experts vs one network of the same architecture
   (same batch, same t grid; interleaved repeats, median): the per-step inference cost CBS claims
   to keep (seed 000, Tab. 1 "same per-step GFLOPs").

    .venv/bin/python benchmarks/cbs_cost.py [experiment=cbs_fmnist_mini] [--repeats 5]
    .venv/bin/python benchmarks/cbs_cost.py --full-scale     # FLOP ratios of the seed-000 full-scale setups

3. ``--full-scale``: the same fraction for the full-scale configs, from FLOPs counted on the meta
   device (no data, no GPU): aux training = aux_steps x batch x 3 forward FLOPs of the aux network
   (forward + backward ~ 3 forwards, as for the experts, so the factor cancels), monitor = K trajectories
   x (grid + 1) NFE x 1 forward, experts = N x steps x batch x 3 forward FLOPs of one expert.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_time(model, data, batch_size: int, steps: int = 12) -> float:
    """Median seconds per AdamW step (flow-matching loss) over ``steps`` steps after 2 warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        x1, y = data.get_batch(torch.randint(len(data), (batch_size,)))
        x0 = torch.randn_like(x1)
        t = torch.rand(batch_size)
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        t0 = time.perf_counter()
        loss = (model(tb * x1 + (1 - tb) * x0, t, None) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


FULL_SCALE = [("cbs_sit_xl2_imagenet256", "data.root"), ("cbs_sit_b2_imagenet256", "data.root"),
              ("sit_s2_imagenet256_cbs", "data.root"), ("cbs_jit_b4_imagenet64", "data.root"),
              ("cbs_unet_cifar10", "data.base.root")]


def full_scale() -> int:
    """Boundary-estimation FLOPs / expert-training FLOPs for each full-scale CBS config (meta-device counts)."""
    import tempfile

    from harness.backbones.size import describe
    from harness.config import load
    from harness.data.shapes import data_shape
    from harness.pipeline.split import aux_unit
    from harness.backbones.build import build_backbone

    root = tempfile.mkdtemp()
    print("| experiment | expert GFLOPs/fwd | aux backbone | aux GFLOPs/fwd | aux steps | N x steps | "
          "aux / experts | monitor / experts | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, key in FULL_SCALE:
        cfg = load([f"experiment={name}", f"{key}={root}"])
        shape, classes, _ = data_shape(cfg["data"])
        expert = describe(lambda: build_backbone(cfg["backbone"], shape, classes), shape)["gflops_fmac"]
        aux = aux_unit(cfg)
        aux_g = describe(lambda: build_backbone(aux.backbone, shape, classes), shape)["gflops_fmac"]
        s, n, bs = cfg["split"], int(cfg["method"]["n"]), int(cfg["train"]["batch_size"])
        experts = n * int(cfg["train"]["steps"]) * bs * 3 * expert
        aux_f = int(aux.train["steps"]) * bs * 3 * aux_g
        monitor = int(s["trajectories"]) * (int(s["grid"]) + 1) * aux_g
        aux_name = "same" if aux.backbone == cfg["backbone"] else f"{aux.backbone['name']} {aux.backbone.get('hidden_size', '')}"
        print(f"| {name} | {expert:.2f} | {aux_name} | {aux_g:.2f} | {aux.train['steps']} | {n} x {cfg['train']['steps']} "
              f"| {aux_f / experts:.4%} | {monitor / experts:.5%} | {(aux_f + monitor) / experts:.3%} |")
    return 0


def main() -> int:
    if "--full-scale" in sys.argv:
        return full_scale()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", default=["experiment=cbs_fmnist_mini"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=128)
    p.add_argument("--sample-steps", type=int, default=20)
    args = p.parse_args()

    from harness.config import load
    from harness.data.base import build_dataset
    from harness.field import Net, Piecewise
    from harness.objectives import build_objective
    from harness.core.registry import get
    from harness.backbones.build import build_backbone

    cfg = load(list(args.overrides))
    data = build_dataset(cfg["data"])
    objective = build_objective(cfg["objective"])
    n = int(cfg["method"].get("n", 3))
    torch.manual_seed(0)
    make = lambda: build_backbone(cfg["backbone"], tuple(data.shape), data.num_classes).eval()  # noqa: E731

    # 1. boundary estimation cost
    bs = int(cfg["train"]["batch_size"])
    st = step_time(make().train(), data, bs)
    s = cfg["split"]
    aux_steps = int(s["aux_steps"] or cfg["train"]["steps"])
    aux = make()
    t0 = time.perf_counter()
    curve = get("monitor", s["monitor"])(Net(aux, objective), shape=tuple(data.shape), num_classes=0,
                                         trajectories=int(s["trajectories"]), grid=int(s["grid"]), seed=0)
    monitor_s = time.perf_counter() - t0
    expert_s = n * int(cfg["train"]["steps"]) * st
    aux_s = aux_steps * st
    print(f"config: {' '.join(args.overrides)}; backbone {cfg['backbone']['name']}, batch {bs}, "
          f"{torch.get_num_threads()} threads")
    print(f"train step: {st * 1e3:.1f} ms; aux {aux_steps} steps = {aux_s:.1f} s; monitor {s['monitor']} "
          f"(K={s['trajectories']}, grid {s['grid']}, {curve.nfe} batched NFE) = {monitor_s:.1f} s; "
          f"experts {n} x {cfg['train']['steps']} steps = {expert_s:.1f} s")
    print(f"boundary estimation / expert training = {(aux_s + monitor_s) / expert_s:.4f} "
          f"(aux {aux_s / expert_s:.4f} + monitor {monitor_s / expert_s:.4f})")

    # 2. Piecewise vs monolithic sampling step time
    mono = Net(make(), objective)
    boundaries = [i / n for i in range(1, n)]
    piece = Piecewise([Net(make(), objective) for _ in range(n)], boundaries) if n > 1 else mono
    sampler_node = dict(cfg["sampler"], steps=args.sample_steps)
    sampler = get("sampler", sampler_node["name"])(**{k: v for k, v in sampler_node.items() if k != "name"})
    x0 = torch.randn(args.sample_batch, *data.shape)
    times = {"monolithic": [], "piecewise": []}
    for _ in range(args.repeats):
        for name, field in (("monolithic", mono), ("piecewise", piece)):
            t0 = time.perf_counter()
            with torch.no_grad():
                sampler(field, x0.clone(), None)
            times[name].append((time.perf_counter() - t0) / args.sample_steps)
    m, pw = statistics.median(times["monolithic"]), statistics.median(times["piecewise"])
    print(f"sampling step (batch {args.sample_batch}, {args.sample_steps} {sampler_node['name']} steps, median of "
          f"{args.repeats}): monolithic {m * 1e3:.1f} ms, piecewise N={n} {pw * 1e3:.1f} ms, ratio {pw / m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
