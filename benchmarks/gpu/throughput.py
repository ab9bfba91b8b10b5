"""GPU figures of issue 14, measured side by side in one run and written as benchmarks/README.md rows.

* training throughput (images/s, bf16 autocast) of SiT-B/2 and SiT-XL/2 on 4x32x32 latents at batch 256:
  the harness trainer (``train_unit``: seeded draws, EMA, clipping, checkpoints) beside a bare PyTorch loop
  on the same model and batch, each without and with ``torch.compile``; per-step time is
  (T(long) - T(short)) / (long - short), so construction and compilation cancel;
* sampling throughput of SiT-XL/2 (Euler, 50 NFE, batch 256; VAE decoding not included: no SD-VAE weights
  travel to the device machine);
* Inception-V3 pool3 feature throughput at 299x299 (the shipped FID weights when present, else torchvision's
  architecture with random weights: same FLOPs, so the same speed);
* FID-10K wall time: 10K SiT-B/2 samples (Euler 50) -> features -> streaming statistics -> Frechet distance;
* ``--samplers``: the published samplers alone (issue 18 item 2) on a randomly initialised SiT-XL/2 with CFG 1.5 on
  3 channels: DiT's DDPM ancestral sampler (250 respaced steps, learn_sigma variance channels) and SiT's SDE sampler
  (Euler-Maruyama, 250 NFE), images/s at batch 64 (each NFE a conditional and a null-class forward).

Anchors (issue 14): DiT-XL/2 with mixed precision on precomputed latents trains at ~108 images/s on one A100 at
batch 128 (fast-DiT README); targets: harness step <= 1.03x the bare loop, SiT-XL/2 >= 2x that anchor.

    python benchmarks/gpu/throughput.py --out gpu_figures.md            # on a CUDA machine (~6 min on an H200)
    python benchmarks/gpu/throughput.py --tiny --out /tmp/figures.md    # a minute on a CPU: checks the script runs
    python benchmarks/gpu/throughput.py --samplers [--tiny] --out s.md   # DDPM and SDE sampler rows only
"""
from __future__ import annotations

import argparse
import copy
import datetime
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ANCHOR_IMG_S = 108.0   # fast-DiT: DiT-XL/2, one A100, batch 128, mixed precision, precomputed latents


def synced(fn: Callable[[], None]) -> float:
    """Wall seconds of ``fn`` with the GPU drained before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def latents(n: int, shape: tuple[int, ...], classes: int):
    from harness.data.base import ArrayDataset

    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randn((n, *shape), generator=g), torch.randint(classes, (n,), generator=g),
                        num_classes=classes, name="synthetic_latents", kind="latent", info={})


def harness_steps(backbone: dict, data, batch: int, steps: int, compile_: bool, workdir: Path) -> float:
    from harness.train import train_unit
    from harness.train.units import UnitSpec

    spec = UnitSpec(label="bench", data={"name": "synthetic"}, backbone=backbone,
                    objective={"name": "flow_matching", "time_sampler": "uniform", "time_sampler_kwargs": {}},
                    train={"steps": steps, "batch_size": batch, "lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999],
                           "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.9999, "seed": 0, "label_dropout": 0.1,
                           "checkpoint_every": 10 ** 9, "keep_checkpoints": 1, "log_every": 50, "amp": "auto",
                           "device": "auto", "compile": compile_})
    return synced(lambda: train_unit(spec, workdir=workdir, dataset=data, progress=False))


def bare_steps(backbone: dict, data, batch: int, steps: int, compile_: bool) -> float:
    """AdamW + flow-matching loss + EMA + clipping, bf16 autocast: the loop a user would write by hand."""
    from harness.backbones.build import build_backbone

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def run() -> None:
        torch.manual_seed(0)
        model = build_backbone(backbone, tuple(data.shape), data.num_classes).to(dev)
        ema = copy.deepcopy(model).requires_grad_(False)
        params, ema_params = list(model.parameters()), list(ema.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        fwd = torch.compile(model) if compile_ else model
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
        for _ in range(steps):
            idx = torch.randint(len(data), (batch,))
            x1, y = data.get_batch(idx)
            x1, y = x1.to(dev, non_blocking=True), y.to(dev)
            x0, t = torch.randn_like(x1), torch.rand(batch, device=dev)
            tb = t.view(-1, 1, 1, 1)
            with amp:
                loss = (fwd(tb * x1 + (1 - tb) * x0, t, y) - (x1 - x0)).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1e-4)

    return synced(run)


def per_step(measure: Callable[[int], float], short: int, long: int) -> float:
    """Seconds per step; a first short run warms up (torch.compile's cache, cuDNN autotuning, allocator)."""
    measure(short)
    return (measure(long) - measure(short)) / (long - short)


def training_rows(name: str, backbone: dict, batch: int, short: int, long: int, data) -> list[str]:
    rows = []
    for compile_ in (False, True):
        with tempfile.TemporaryDirectory() as d:
            runs = iter(range(10))
            h = per_step(lambda s: harness_steps(backbone, data, batch, s, compile_, Path(d) / f"h{next(runs)}"), short, long)
        b = per_step(lambda s: bare_steps(backbone, data, batch, s, compile_), short, long)
        rows.append(f"| {name}, batch {batch}, bf16{', compile' if compile_ else ''} | {batch / h:.1f} | {batch / b:.1f} | "
                    f"{h / b:.3f} | {batch / h / ANCHOR_IMG_S:.2f} |")
    return rows


def sampling_row(backbone: dict, data, batch: int, nfe: int) -> str:
    from harness.backbones.build import build_backbone
    from harness.field.base import Net
    from harness.objectives import build_objective
    from harness.sample import Euler

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_backbone(backbone, tuple(data.shape), data.num_classes).to(dev).eval()
    field, sampler = Net(model, build_objective({"name": "flow_matching"})), Euler(steps=nfe)
    x0 = torch.randn((batch, *data.shape), device=dev)
    y = torch.randint(data.num_classes, (batch,), device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with amp:
        sampler(field, x0[:2], y[:2])                         # warm-up
        sec = synced(lambda: sampler(field, x0, y))
    return f"| sampling SiT, Euler {nfe} NFE, batch {batch}, bf16 (no VAE decode) | {batch / sec:.1f} images/s |"


def inception_row(n: int, batch: int) -> tuple[str, Callable]:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        from harness.evaluate.feature_extractors import InceptionV3, fid_helper_weights

        if fid_helper_weights() is None:
            raise FileNotFoundError
        ext = InceptionV3(device=str(dev))
        what = "shipped FID weights"

        def feats(x: torch.Tensor):
            return ext.features(x)
    except Exception:  # noqa: BLE001 - the weights do not travel; the architecture's speed is what is measured
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).to(dev).eval()
        net.fc = torch.nn.Identity()
        what = "torchvision architecture, random weights"

        @torch.no_grad()
        def feats(x: torch.Tensor):
            out = []
            for i in range(0, len(x), batch):
                xb = x[i:i + batch].to(dev).float()
                xb = torch.nn.functional.interpolate(xb, size=(299, 299), mode="bilinear", align_corners=False)
                out.append(net((xb - 128) / 128).float().cpu())
            return torch.cat(out).numpy()

    imgs = torch.randint(0, 256, (n, 3, 256, 256), dtype=torch.uint8)
    feats(imgs[:batch])
    sec = synced(lambda: feats(imgs))
    return f"| Inception-V3 pool3 features at 299x299 from 256x256 uint8 ({what}), batch {batch} | {n / sec:.1f} images/s |", feats


def fid_row(backbone: dict, data, n: int, batch: int, nfe: int, feats: Callable) -> str:
    import numpy as np

    from harness.backbones.build import build_backbone
    from harness.evaluate.metrics import FeatureStats, frechet_distance
    from harness.field.base import Net
    from harness.objectives import build_objective
    from harness.sample import Euler

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_backbone(backbone, tuple(data.shape), data.num_classes).to(dev).eval()
    field, sampler = Net(model, build_objective({"name": "flow_matching"})), Euler(steps=nfe)

    def run() -> None:
        out = []
        for i in range(0, n, batch):
            b = min(batch, n - i)
            x = sampler(field, torch.randn((b, *data.shape), device=dev), torch.randint(data.num_classes, (b,), device=dev))[0]
            img = ((x[:, :3].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)   # latents stand in for images
            img = torch.nn.functional.interpolate(img.float(), size=(256, 256)).to(torch.uint8)
            out.append(np.asarray(feats(img.cpu())))
        f = np.concatenate(out)
        s = FeatureStats.from_features(f)
        frechet_distance(s.mu, s.sigma, s.mu + 1.0, s.sigma)

    sec = synced(run)
    return f"| FID-{n // 1000}K wall time: SiT sampling (Euler {nfe}) + Inception + FD | {sec:.0f} s |"


def published_sampler_rows(name: str, backbone: dict, shape: tuple[int, ...], classes: int, batch: int,
                           steps: int) -> list[str]:
    """images/s of DiT's DDPM sampler and SiT's SDE sampler, guided as released (CFG 1.5 on 3 channels)."""
    from harness.backbones.build import build_backbone
    from harness.field.base import Net
    from harness.field.guided import Branch, Guided
    from harness.objectives import build_objective
    from harness.sample import DDPMAncestral, EulerMaruyama, PerSampleNoise
    from harness.sample.seeded import generators_of

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    rows = []
    for label, learn_sigma, objective, sampler in (
            ("DDPM ancestral (DiT)", True, {"name": "ddpm", "schedule": "linear_1000"}, DDPMAncestral(steps=steps)),
            ("SDE Euler-Maruyama (SiT)", False, {"name": "flow_matching"}, EulerMaruyama(steps=steps))):
        torch.manual_seed(0)
        model = build_backbone({**backbone, "learn_sigma": learn_sigma}, shape, classes).to(dev).eval()
        net = Net(model, build_objective(objective))
        field = Guided(Branch(net, "cond"), Branch(net, "null", stream=1), 1.5, num_classes=classes,
                       channels=min(3, shape[0]))
        x0 = torch.randn((batch, *shape), device=dev)
        y = torch.randint(classes, (batch,), device=dev)
        with amp:
            sampler(field, x0[:2], y[:2], noise=PerSampleNoise(generators_of(range(2))))            # warm-up
            sec = synced(lambda: sampler(field, x0, y, noise=PerSampleNoise(generators_of(range(batch)))))
        rows.append(f"| sampling {name} (random init), {label}, {steps} NFE x 2 (CFG 1.5, 3 channels), "
                    f"batch {batch}, bf16, per-seed noise (no VAE decode) | {batch / sec:.2f} images/s |")
    return rows


def adm_rows(n: int, dim: int = 2048) -> list[str]:
    """The ADM evaluator's costs at FID-50K scale (issue 18): k=3 precision/recall over n x n float16 distance
    blocks of 10,000 on the GPU, and the Frechet distance's 2048 x 2048 sqrtm (scipy, CPU) on random features."""
    import numpy as np

    from harness.evaluate.adm_suite import adm_precision_recall
    from harness.evaluate.metrics import FeatureStats, frechet_distance

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = np.random.default_rng(0)
    ref, sam = g.standard_normal((n, dim), dtype=np.float32), g.standard_normal((n, dim), dtype=np.float32)
    t0 = time.perf_counter()
    adm_precision_recall(ref, sam, device=dev)
    if dev == "cuda":
        torch.cuda.synchronize()
    pr = time.perf_counter() - t0
    s = FeatureStats.from_features(ref[: max(dim + 1, min(n, 10_000))])
    t0 = time.perf_counter()
    frechet_distance(s.mu, s.sigma, s.mu + 0.1, s.sigma)
    fd = time.perf_counter() - t0
    return [f"| ADM precision/recall (k=3, fp16 blocks of 10K) on {n} x {n} features, {dev} | {pr:.1f} s |",
            f"| Frechet distance, {dim} x {dim} sqrtm (scipy, CPU) | {fd:.1f} s |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny sizes, any device: checks that the script runs")
    p.add_argument("--samplers", action="store_true", help="only the published samplers' rows (DDPM, SDE)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dev_name = torch.cuda.get_device_name(0) if cuda else "CPU (no GPU)"
    from harness.config import load

    def node(name: str) -> dict:
        return dict(load([f"backbone={name}"])["backbone"])

    if args.samplers:
        backbone = dict(node("dit_tiny"), hidden_size=32, depth=2, num_heads=2, patch_size=2) if args.tiny else node("sit_xl2")
        shape, batch, steps = ((4, 8, 8), 4, 5) if args.tiny else ((4, 32, 32), 64, 250)
        name = "dit_tiny (check)" if args.tiny else "SiT-XL/2"
        lines = [f"Sampler figures, {datetime.date.today().isoformat()}, {dev_name}, torch {torch.__version__}", "",
                 "| measurement | figure |", "|---|---|", *published_sampler_rows(name, backbone, shape, 1000, batch, steps)]
        Path(args.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    if args.tiny:
        models = [("dit_tiny (check)", dict(node("dit_tiny"), hidden_size=32, depth=2, num_heads=2, patch_size=2), 8)]
        shape, short, long, nfe, n_fid, inc_n, inc_batch = (4, 8, 8), 2, 4, 4, 64, 16, 8
    else:
        models = [("SiT-B/2", node("sit_b2"), 256), ("SiT-XL/2", node("sit_xl2"), 256)]
        shape, short, long, nfe, n_fid, inc_n, inc_batch = (4, 32, 32), 10, 40, 50, 10_000, 10_000, 500
    data = latents(4096 if not args.tiny else 256, shape, 1000)
    date = datetime.date.today().isoformat()
    lines = [f"GPU figures, {date}, {dev_name}, torch {torch.__version__}", "",
             "| model, batch | harness images/s | bare loop images/s | harness / bare step time | x fast-DiT A100 anchor (108/s) |",
             "|---|---|---|---|---|"]
    for name, backbone, batch in models:
        lines += training_rows(name, backbone, batch, short, long, data)
        Path(args.out).write_text("\n".join(lines) + "\n")   # partial figures survive a timeout
    lines += ["", "| measurement | figure |", "|---|---|", sampling_row(models[-1][1], data, models[-1][2], nfe)]
    row, feats = inception_row(inc_n, inc_batch)
    lines.append(row)
    lines.append(fid_row(models[0][1], data, n_fid, models[0][2], nfe, feats))
    Path(args.out).write_text("\n".join(lines) + "\n")
    lines += adm_rows(512 if args.tiny else 50_000, 64 if args.tiny else 2048)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
