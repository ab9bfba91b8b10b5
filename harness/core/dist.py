"""Process groups and the rules of a distributed job (DESIGN.md "Distributed execution").

One experiment may run as N processes launched by torchrun (one node) or srun/submitit (SLURM,
one or more nodes).  The rules every layer follows:

* **Rank 0 owns the side effects**: unit locks, MLflow runs, files, checkpoints.  The other ranks
  wait at a barrier (:func:`main_first`) and then read what rank 0 wrote.
* **Every rank computes what is collective** (DDP training steps, sampling its share of the seeds);
  decisions that must agree (is this unit finished? which MLflow run?) are taken on rank 0 and
  broadcast (:func:`broadcast`).
* **Results do not depend on N**: sample i uses seed i, rank r takes the seeds r, r + N, ...
  (:func:`shard`), and :func:`gather_rows` puts rows back in seed order on every rank.

Single-process runs go through the same functions, which then do nothing, so no caller branches on
whether a process group exists.
"""
from __future__ import annotations

import contextlib
import datetime
import faulthandler
import gc
import os
import random
from typing import Any, Iterator, Sequence

import torch

from harness.core.errors import ConfigError


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def world() -> int:
    """Number of processes of the job (1 without a process group)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    """Rank on this node: torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID, else the global rank."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return rank()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``cuda:<local rank>``) when there is one, else the CPU; ``cuda`` under a
    process group is also this process's GPU, so every rank of a node uses its own device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and world() > 1:
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and later), as DiT/SiT/EDM2 train and sample."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _slurm_env() -> dict[str, str]:
    """torch.distributed's env:// variables for a multi-task SLURM job, from SLURM's own (via submitit).

    The master address is the first host of the job's node list; the port is derived from the job id, so
    every task of the job agrees without talking.  submitit draws it from [20000, 60000], which overlaps
    Linux's ephemeral range (32768-60999): on a busy node any outgoing connection or port-0 bind can hold
    it, rank 0 then fails with EADDRINUSE and the other ranks wait for the whole rendezvous timeout (seen in
    CI).  Ours comes from [20000, 32767], below that range; a MASTER_PORT set by the user wins.
    """
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    port = os.environ.get("MASTER_PORT") or str(master_port_for_job(os.environ.get("SLURM_JOB_ID", "0")))
    return {"MASTER_ADDR": env.master_addr, "MASTER_PORT": port, "RANK": str(env.rank),
            "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.local_world_size)}


def master_port_for_job(job_id: str) -> int:
    """A rendezvous port every task of a SLURM job derives alike, outside the ephemeral port range."""
    return random.Random(str(job_id)).randint(20000, 32767)


def launched_world() -> int:
    """Processes the launcher started for this job: torchrun's WORLD_SIZE, else SLURM's task count."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_NTASKS"])
    return 1


def init_from_env(timeout_s: float = 1800.0) -> int:
    """Join the job's process group if the launcher started several processes; returns the world size.

    torchrun sets RANK/WORLD_SIZE/MASTER_*; a multi-task SLURM job (srun, submitit) sets SLURM_*
    variables, translated here.  Backend: NCCL when CUDA is available, gloo otherwise (CPU tests).
    Each process binds its GPU by local rank before joining, so NCCL sees one device per process.
    """
    if is_initialized():
        return world()
    n = launched_world()
    if n <= 1:
        return 1
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(_slurm_env())
    # a rank that dies in C++ (SIGABRT, SIGSEGV) prints every Python thread's stack to its stderr, which
    # torchrun and srun keep per rank: without it the job log shows only "exitcode: -6"
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def shutdown() -> None:
    """Leave the process group while the interpreter is fully alive.

    Objects that hold the group (DDP wrappers, their reducers and finished works) are collected
    first, so their C++ destructors run now and not during interpreter finalization, where a
    destructor that needs the GIL aborts the process ("terminate called without an active
    exception", exit code -6 under torchrun; pytorch/pytorch#179291 describes the mechanism).
    """
    if is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the block first (writing a cache), the others after it (reading it); yields is_main()."""
    if not is_main():
        barrier()
    try:
        yield is_main()
    finally:
        if is_main():
            barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not is_initialized():
        return value
    box = [value if is_main() else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not is_initialized():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a preemption signal seen by one task)."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def check_divides(batch: int, key: str) -> int:
    """``batch // world()``, or a one-line error when the world size does not divide the global batch."""
    n = world()
    if batch % n:
        raise ConfigError(f"{key}={batch} is not divisible by the {n} processes of this job",
                          hint=f"use a multiple of {n}, or launch a number of processes that divides {batch}")
    return batch // n


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's share of ``items``: positions r, r + N, r + 2N, ... (EDM2's seed-per-sample rule)."""
    return list(items)[rank()::world()]


def _collective_device() -> torch.device:
    """Where tensors must live for collectives: the current CUDA device under NCCL, the CPU under gloo."""
    if is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows sharded by :func:`shard` back in their original order, on every rank (``total`` rows in all).

    Rank r holds rows r, r + N, ...; shorter shards are padded for the collective and the padding
    dropped after.  The result is on the CPU.
    """
    n = world()
    if n == 1:
        return local.cpu()
    dev = _collective_device()
    per = -(-total // n)
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: len(local)] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(n)]
    torch.distributed.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, total, n))
        out[r::n] = part[:count].cpu()
    return out
