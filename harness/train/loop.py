"""One training loop for every unit (EDM2's training_loop as the model; STYLE practices 4 and 6).

Every random draw of step k (data indices, noise, t, label dropout) comes from a
generator seeded with (seed, k), so a unit resumed from a checkpoint at step k continues
bit-identically on CPU, DDP ranks take slices of the same global batch, and two units
that differ only in their time interval see paired draws (seed 000, Alg. 1).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from harness.backbones.build import build_backbone
from harness.core.files import sha256_file
from harness.core.hashing import derived_seed
from harness.core.versions import CONFIG_VERSION
from harness.objectives import build_objective
from harness.train.checkpoint import load_latest, save_checkpoint
from harness.train.units import UnitSpec, done_record


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): resumption and DDP need nothing else."""
    return torch.Generator().manual_seed(derived_seed("harness", seed, step))


def draw_batch(dataset, step: int, *, seed: int, batch_size: int, interval: tuple[float, float], objective,
               label_dropout: float, rank: int = 0, world: int = 1):
    """The global batch of one step (same on every rank), then this rank's slice."""
    g = step_generator(seed, step)
    idx = torch.randint(len(dataset), (batch_size,), generator=g)
    x1, y = dataset.get_batch(idx)
    noise = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    t = objective.sample_t(torch.rand(batch_size, generator=g, dtype=torch.float64), interval).to(x1.dtype)
    drop = torch.rand(batch_size, generator=g) < label_dropout
    if dataset.num_classes > 0:
        y = torch.where(drop, torch.full_like(y, dataset.num_classes), y)
    else:
        y = None
    per = batch_size // world
    sl = slice(rank * per, (rank + 1) * per)
    return x1[sl], noise[sl], t[sl], None if y is None else y[sl]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_model_for(spec: UnitSpec, shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The unit's network, initialised from its seed (identical on every rank)."""
    torch.manual_seed(int(spec.train["seed"]))
    return build_backbone(spec.backbone, shape, num_classes)


def train_unit(spec: UnitSpec, *, workdir: Path, dataset=None, tracker=None, run_id: Optional[str] = None,
               progress: bool = True, stop_after: Optional[int] = None) -> dict[str, Any]:
    """Train one unit to ``spec.train['steps']``, resuming from its latest good checkpoint.

    Returns the completion record (also written to ``<unit>/done.json``).  ``stop_after``
    stops early after that many steps in this call (tests, preemption drills).
    """
    from harness.data.base import build_dataset

    unit_dir = spec.directory(workdir)
    record = done_record(unit_dir)
    if record is not None:
        return record
    tc = spec.train
    rank, world = _dist()
    device = resolve_device(tc.get("device", "auto"))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    dataset = dataset if dataset is not None else build_dataset(spec.data)
    if tc["batch_size"] % world:
        from harness.core.errors import ConfigError

        raise ConfigError(f"train.batch_size={tc['batch_size']} is not divisible by the {world} DDP processes")
    objective = build_objective(spec.objective)
    model = build_model_for(spec, tuple(dataset.shape), dataset.num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if tc["ema_decay"] > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    meta = {"unit": spec.to_dict(), "data_shape": list(dataset.shape), "num_classes": dataset.num_classes}
    start = 0
    ckpt = load_latest(unit_dir, config_version=CONFIG_VERSION, map_location=str(device))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        start = int(ckpt["step"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = tc.get("amp", "auto") == "on" or (tc.get("amp", "auto") == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    ema_params = list(ema.parameters()) if ema is not None else []
    params = list(model.parameters())
    total, end = int(tc["steps"]), int(tc["steps"]) if stop_after is None else min(int(tc["steps"]), start + stop_after)
    loss_sum = torch.zeros((), device=device)
    bar = _progress(progress and rank == 0, spec.label, total, start)
    model.train()
    for step in range(start, end):
        x1, noise, t, y = draw_batch(dataset, step, seed=int(tc["seed"]), batch_size=int(tc["batch_size"]),
                                     interval=spec.interval, objective=objective,
                                     label_dropout=float(tc["label_dropout"]), rank=rank, world=world)
        x1, noise, t = x1.to(device, non_blocking=True), noise.to(device, non_blocking=True), t.to(device)
        y = None if y is None else y.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc["lr"], tc["warmup_steps"])
        with autocast():
            loss = objective.loss(net, x1, noise, t, y).mean()
            aux = getattr(model, "last_aux_loss", None)
            if aux is not None:
                loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - tc["ema_decay"])
        loss_sum += loss.detach()
        done = step + 1
        if done % tc["log_every"] == 0 or done == total:
            n = done % tc["log_every"] or tc["log_every"]
            value = float(loss_sum) / n
            loss_sum.zero_()
            if tracker is not None and run_id is not None and rank == 0:
                tracker.log_metrics(run_id, {"train_loss": value, "lr": opt.param_groups[0]["lr"]}, step=done)
            if bar is not None:
                bar.update(done, loss=value)
        elif bar is not None and done % 10 == 0:
            bar.update(done)
        if done % tc["checkpoint_every"] == 0 or done == total:
            if rank == 0:
                _save(unit_dir, done, model, ema, opt, meta, tc)
            if world > 1:
                torch.distributed.barrier()
    if bar is not None:
        bar.close()
    if end < total:
        return {"finished": False, "step": end}
    final = sorted(unit_dir.glob("ckpt_*.pt"))[-1]
    record = {"finished": True, "step": total, "checkpoint": final.name, "sha256": sha256_file(final),
              "hash": spec.hash, "label": spec.label, "data_shape": meta["data_shape"], "num_classes": dataset.num_classes,
              "mlflow_run_id": run_id}
    if rank == 0:
        (unit_dir / "done.json").write_text(json.dumps(record, indent=1))
    return record


def _save(unit_dir: Path, step: int, model, ema, opt, meta: dict, tc: dict) -> None:
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    if ema is not None:
        payload["ema"] = ema.state_dict()
    save_checkpoint(unit_dir, step, payload, config=meta, config_version=CONFIG_VERSION, keep=int(tc["keep_checkpoints"]))


class _Bar:
    """A rich progress bar that costs nothing between refreshes."""

    def __init__(self, label: str, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=False,
                                 auto_refresh=False)  # no refresh thread competing with training for 2 cores
        self.task = self.progress.add_task(label, total=total, completed=start, loss="-")
        self.progress.start()

    def update(self, done: int, loss: Optional[float] = None) -> None:
        fields = {} if loss is None else {"loss": f"{loss:.4f}"}
        self.progress.update(self.task, completed=done, **fields)
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, label: str, total: int, start: int) -> Optional[_Bar]:
    return _Bar(label, total, start) if enabled else None


def load_unit_field_parts(spec: UnitSpec, workdir: Path, *, use_ema: bool = True, device: str = "cpu"):
    """(model in eval mode, objective, record) of a finished unit, loaded from its checksummed checkpoint."""
    from harness.core.errors import CheckpointError
    from harness.train.checkpoint import load_checkpoint

    unit_dir = spec.directory(workdir)
    record = done_record(unit_dir)
    if record is None:
        raise CheckpointError(f"unit {spec.label} ({spec.hash}) has not finished training in {unit_dir}",
                              hint="run `harness train` or `harness run` with the same config first")
    ckpt = load_checkpoint(unit_dir / record["checkpoint"], config_version=CONFIG_VERSION, map_location=device)
    model = build_model_for(spec, tuple(record["data_shape"]), int(record["num_classes"]))
    model.load_state_dict(ckpt["ema"] if use_ema and "ema" in ckpt else ckpt["model"])
    return model.to(device).eval(), build_objective(spec.objective), record
