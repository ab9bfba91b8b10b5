"""One training loop for every unit (EDM2's training_loop as the model; STYLE practices 4 and 6).

Every random draw of step k comes from (seed, k): the batch (data indices, noise, t, label
dropout; :mod:`harness.train.batches`) from a generator seeded by (seed, k), and the randomness
*inside* the forward (dropout, training-time token routing/masking) from the global RNG re-seeded
with (seed, k, rank) before the step.  So a unit resumed from a checkpoint at step k continues
bit-identically on CPU, DDP ranks take slices of the same global batch, and two units that differ
only in their time interval see paired draws (seed 000, Alg. 1).

Under ``torch.distributed`` (torchrun, srun) each rank trains its slice of the global batch
(``train.batch_size / world``) in ``train.batch_gpu``-sized accumulation rounds (EDM2's
``batch_gpu``); gradients are all-reduced by DDP; rank 0 alone writes checkpoints and logs.
A stop signal (SIGUSR2 before a SLURM timeout/preemption, SIGTERM) is turned into a checkpoint at
the next step boundary before the job requeues (:mod:`harness.train.preemption`).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from harness.backbones.build import build_backbone
from harness.backbones.dit_import import import_official
from harness.backbones.dit_transfer import transfer_ddpm
from harness.core import dist
from harness.core.errors import CheckpointError, ConfigError, HarnessError
from harness.core.files import sha256_file, write_json_atomic
from harness.core.hashing import derived_seed
from harness.core.versions import CONFIG_VERSION
from harness.data.captions import check_against_backbone
from harness.objectives import build_objective
from harness.train.batches import rank_batches
from harness.train.checkpoint import load_checkpoint, load_latest, save_checkpoint
from harness.train.ema import PowerEMA, pick_profile, profile_key, save_snapshot, snapshot_steps
from harness.train.preemption import PreemptionGuard, stop_requested
from harness.train.units import UnitSpec, done_record


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def build_model_for(spec: UnitSpec, shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The unit's network, initialised from its seed (identical on every rank)."""
    torch.manual_seed(int(spec.train["seed"]))
    return build_backbone(spec.backbone, shape, num_classes)


def load_init(model: torch.nn.Module, spec: UnitSpec) -> Optional[dict[str, Any]]:
    """Load ``backbone.init_from`` over the seed's weights; what was read, or None.

    Strict (an official DiT/SiT checkpoint, in full) by default; ``backbone.init_transfer: eq20`` is seed
    003's DDPM -> expert transfer (:mod:`harness.backbones.dit_transfer`), printed and recorded.
    """
    path = spec.backbone.get("init_from")
    if path is None:
        return None
    if spec.backbone.get("init_transfer") is not None:
        record = transfer_ddpm(model, path)
        if dist.rank() == 0:
            print(f"{spec.label}: {record.line()}", flush=True)
        return dict(record.to_dict(), sha256=sha256_file(path, memo=True))
    return dict(import_official(model, path).to_dict(), sha256=sha256_file(path, memo=True))


def micro_batches(per_rank: int, batch_gpu: Optional[int]) -> list[slice]:
    """Accumulation rounds of one rank's batch: slices of at most ``batch_gpu`` items (one round when None)."""
    size = per_rank if not batch_gpu else int(batch_gpu)
    return [slice(i, min(i + size, per_rank)) for i in range(0, per_rank, size)]


def _oom_error(step: int, per_rank: int, batch_gpu: Optional[int]) -> HarnessError:
    return HarnessError(f"CUDA out of memory at step {step} with {per_rank} items per GPU"
                        f"{f' in rounds of {batch_gpu}' if batch_gpu else ''}",
                        hint="set train.batch_gpu to a smaller per-GPU round (gradient accumulation, same result) "
                             "and/or backbone.checkpointing=true (recompute activations in the backward pass)")


_NO_TRAINING: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("no_training", default=None)


@contextlib.contextmanager
def no_training(why: str) -> Iterator[None]:
    """Inside the block a unit that would need training steps is a one-line ConfigError (``why`` says who
    forbids it: ``harness eval`` scores trained units only), whichever code path asks for it (a method's
    prepare step training an aux model included).  Imported models (``train.steps: 0``) still load."""
    token = _NO_TRAINING.set(why)
    try:
        yield
    finally:
        _NO_TRAINING.reset(token)


def train_unit(spec: UnitSpec, *, workdir: Path, dataset=None, tracker=None, run_id: Optional[str] = None,
               progress: bool = True, stop_after: Optional[int] = None, position: str = "") -> dict[str, Any]:
    """Train one unit to ``spec.train['steps']``, resuming from its latest good checkpoint.

    With ``backbone.init_from`` training starts from that checkpoint's weights (EMA included); with
    ``train.steps=0`` as well, they are saved as the unit's step-0 checkpoint (a released model).

    Collective under ``torch.distributed``: every rank calls it.  Returns the completion record
    (written to ``<unit>/done.json`` by rank 0).  ``stop_after`` stops early after that many steps in
    this call (tests, preemption drills).  ``position`` ("unit 2/3") prefixes the progress output.

    Rank 0 keeps ``<unit>/progress.json`` (step, total, last logged loss, times; written atomically at
    every ``train.log_every`` boundary), which ``harness sweep`` reads to show units trained in other processes.
    """
    from harness.data.base import build_dataset

    unit_dir = spec.directory(workdir)
    record = done_record(unit_dir)
    if record is not None:
        return record
    if _NO_TRAINING.get() is not None and int(spec.train.get("steps", 1)) > 0:
        raise ConfigError(f"{_NO_TRAINING.get()}, and unit {spec.label} ({spec.hash}) is not trained in {workdir}",
                          hint="train it first with harness run (same overrides), or score a sample npz with --samples")
    tc = spec.train
    rank, world = dist.rank(), dist.world()
    device = dist.resolve_device(tc.get("device", "auto"))
    dist.enable_tf32(device)
    dataset = dataset if dataset is not None else build_dataset(spec.data)
    per_rank = dist.check_divides(int(tc["batch_size"]), "train.batch_size")
    rounds = micro_batches(per_rank, tc.get("batch_gpu"))
    objective = build_objective(spec.objective)
    text_dim = spec.backbone.get("text_dim")
    check_against_backbone(dataset, spec.backbone.get("text_len", 77), text_dim)   # before any step
    model = build_model_for(spec, tuple(dataset.shape), dataset.num_classes)
    imported = load_init(model, spec)   # before the EMA copies the weights
    model = model.to(device)
    stds = list(tc.get("ema_std") or [])
    power = PowerEMA(model, stds) if stds else None                      # EDM2's power-function profiles
    ema = copy.deepcopy(model).requires_grad_(False) if not stds and tc.get("ema_decay") else None   # fixed decay
    opt = torch.optim.AdamW(model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    meta = {"unit": spec.to_dict(), "data_shape": list(dataset.shape), "num_classes": dataset.num_classes}
    start = 0
    ckpt = load_latest(unit_dir, config_version=CONFIG_VERSION, map_location=str(device))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if power is not None:
            power.load(model, [ckpt["ema_profiles"][profile_key(s)] for s in stds])
        start = int(ckpt["step"])
    net = model
    if world > 1:  # joint experts (time_experts) step one expert per batch: the others get no gradient
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)))
    forward = torch.compile(net) if tc.get("compile") else net   # EMA and checkpoints keep the uncompiled module
    use_amp = tc.get("amp", "auto") == "on" or (tc.get("amp", "auto") == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    ema_params = list(ema.parameters()) if ema is not None else []
    params = list(model.parameters())
    total, end = int(tc["steps"]), int(tc["steps"]) if stop_after is None else min(int(tc["steps"]), start + stop_after)
    snapshots = set(snapshot_steps(total, int(tc.get("ema_snapshots") or 8))) if power is not None else set()
    loss_sum = torch.zeros((), device=device)
    bar = _progress(progress and rank == 0, f"{position} {spec.label}".strip(), total, start)
    report = ProgressFile(unit_dir, spec, total, start) if rank == 0 else None
    seed = int(tc["seed"])
    model.train()
    batches = rank_batches(dataset, seed=seed, batch_size=int(tc["batch_size"]), interval=spec.interval,
                           objective=objective, label_dropout=float(tc["label_dropout"]), start=start, end=end,
                           rank=rank, world=world, workers=int(tc.get("workers") or 0),
                           pin_memory=device.type == "cuda", hflip=bool(spec.data.get("hflip")))
    with PreemptionGuard() as guard:
        for step, (x1, noise, t, y) in batches:
            torch.manual_seed(derived_seed("harness-forward", seed, step, rank))  # dropout, token masks: (seed, step, rank)
            x1, noise, t = x1.to(device, non_blocking=True), noise.to(device, non_blocking=True), t.to(device)
            y = None if y is None else y.to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc["lr"], tc["warmup_steps"])
            opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            try:
                for i, sl in enumerate(rounds):
                    last = i == len(rounds) - 1
                    sync = contextlib.nullcontext() if last or world == 1 else net.no_sync()
                    with sync:
                        with autocast():
                            loss = objective.loss(forward, x1[sl], noise[sl], t[sl], None if y is None else y[sl]).mean()
                            aux = getattr(model, "last_aux_loss", None)
                            if aux is not None:
                                loss = loss + aux
                        weight = (sl.stop - sl.start) / per_rank   # the round's share of the rank's batch mean
                        (loss * weight).backward()
                    step_loss += loss.detach() * weight
            except torch.cuda.OutOfMemoryError:
                raise _oom_error(step, per_rank, tc.get("batch_gpu")) from None
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
            opt.step()
            done = step + 1
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1.0 - tc["ema_decay"])
            if power is not None:
                power.update(done)
                if done in snapshots and rank == 0:
                    save_snapshot(unit_dir, done, {profile_key(s): power.state_dict(model, k) for k, s in enumerate(stds)})
            loss_sum += step_loss
            if done % tc["log_every"] == 0 or done == total:
                n = done % tc["log_every"] or tc["log_every"]
                value = float(loss_sum) / n
                loss_sum.zero_()
                if tracker is not None and run_id is not None and rank == 0:
                    tracker.log_metrics(run_id, {"train_loss": value, "lr": opt.param_groups[0]["lr"]}, step=done)
                if bar is not None:
                    bar.update(done, loss=value)
                if report is not None:
                    report.write(done, value)
            elif bar is not None and done % 10 == 0:
                bar.update(done)
            stop = stop_requested(guard, dist.any_rank)
            if done % tc["checkpoint_every"] == 0 or done == total or stop:
                if rank == 0:
                    _save(unit_dir, done, model, ema, power, opt, meta, tc, resumed_from=start)
                dist.barrier()
            if stop:
                if bar is not None:
                    bar.close()
                guard.hand_on(done)
    if bar is not None:
        bar.close()
    if total == 0:  # a released model, evaluated as imported: its weights are the unit's checkpoint
        if rank == 0:
            _save(unit_dir, 0, model, ema, power, opt, meta, tc, resumed_from=start)
        dist.barrier()
    if end < total:
        return {"finished": False, "step": end, "resumed_from": start}
    final = sorted(unit_dir.glob("ckpt_*.pt"))[-1]
    record = {"finished": True, "step": total, "checkpoint": final.name, "sha256": sha256_file(final),
              "hash": spec.hash, "label": spec.label, "data_shape": meta["data_shape"], "num_classes": dataset.num_classes,
              "mlflow_run_id": run_id, "resumed_from": start, "world_size": world,
              **({"init_from": imported} if imported else {})}
    if rank == 0:
        write_json_atomic(unit_dir / "done.json", record)
    dist.barrier()
    return record


def _save(unit_dir: Path, step: int, model, ema, power, opt, meta: dict, tc: dict, *, resumed_from: int) -> None:
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    if ema is not None:
        payload["ema"] = ema.state_dict()
    if power is not None:
        payload["ema_profiles"] = {profile_key(s): power.state_dict(model, k) for k, s in enumerate(power.stds)}
    save_checkpoint(unit_dir, step, payload, config=dict(meta, resumed_from=resumed_from),
                    config_version=CONFIG_VERSION, keep=int(tc["keep_checkpoints"]))


PROGRESS_FILE = "progress.json"


class ProgressFile:
    """``<unit>/progress.json``: where a unit's training is, for a reader in another process (``harness sweep``).

    {hash, label, step, total, loss (last logged mean, None before the first log), start_step (this
    process's first step), started (its wall-clock start), time (of this write), pid}; atomic writes only.
    """

    def __init__(self, unit_dir: Path, spec: UnitSpec, total: int, start: int) -> None:
        import os
        import time

        self.path = Path(unit_dir) / PROGRESS_FILE
        self.base = {"hash": spec.hash, "label": spec.label, "total": total, "start_step": start,
                     "started": time.time(), "pid": os.getpid()}
        self.write(start, None)

    def write(self, step: int, loss: Optional[float]) -> None:
        import time

        try:
            write_json_atomic(self.path, {**self.base, "step": step, "loss": loss, "time": time.time()}, indent=None)
        except OSError:
            pass   # progress is a courtesy: a full disk is reported by the checkpoint that follows


class _Lines:
    """Progress off a terminal (CI, SLURM and submitit logs): one line at 25, 50, 75 and 100 % of the steps."""

    def __init__(self, label: str, total: int, start: int) -> None:
        self.label, self.total = label, total
        self.marks = [m for m in (total // 4, total // 2, 3 * total // 4, total) if m > start and m > 0]
        self.loss: Optional[float] = None
        print(f"{label}: training, step {start}/{total}" if start else f"{label}: training, {total} steps", flush=True)

    def update(self, done: int, loss: Optional[float] = None) -> None:
        self.loss = loss if loss is not None else self.loss
        if self.marks and done >= self.marks[0]:
            while self.marks and done >= self.marks[0]:
                self.marks.pop(0)
            tail = "" if self.loss is None else f" loss {self.loss:.4f}"
            print(f"{self.label}: step {done}/{self.total} ({100 * done // max(self.total, 1)} %){tail}", flush=True)

    def close(self) -> None:
        pass


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


def _progress(enabled: bool, label: str, total: int, start: int):
    """A rich bar on a terminal, milestone lines elsewhere, or None."""
    import sys

    if not enabled:
        return None
    return _Bar(label, total, start) if sys.stdout.isatty() else _Lines(label, total, start)


def load_unit_field_parts(spec: UnitSpec, workdir: Path, *, use_ema: bool = True, device: str = "cpu",
                          ema_std: Optional[float] = None):
    """(model in eval mode, objective, record) of a finished unit, loaded from its checksummed checkpoint.

    EMA weights by default: the fixed-decay EMA, or the power-function profile ``ema_std`` (``eval.ema_std``;
    None = the last of ``train.ema_std``), reconstructed post hoc from the snapshots when it was not tracked.
    """
    unit_dir = spec.directory(workdir)
    record = done_record(unit_dir)
    if record is None:
        raise CheckpointError(f"unit {spec.label} ({spec.hash}) has not finished training in {unit_dir}",
                              hint="run `harness train` or `harness run` with the same config first")
    ckpt = load_checkpoint(unit_dir / record["checkpoint"], config_version=CONFIG_VERSION, map_location=str(device))
    model = build_model_for(spec, tuple(record["data_shape"]), int(record["num_classes"]))
    if use_ema and "ema_profiles" in ckpt:
        state = pick_profile(ckpt, unit_dir, spec.train["ema_std"], ema_std, int(record["step"]))
    else:
        state = ckpt["ema"] if use_ema and "ema" in ckpt else ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), build_objective(spec.objective), record
