"""CLI of the sweep feature: ``harness sweep FILE [...]`` and ``harness status SWEEP``.

Registered through ``COMMAND_MODULES`` in :mod:`harness.cli`; heavy imports stay inside the commands.
"""
from __future__ import annotations

import argparse
from typing import Callable


def cmd_sweep(args) -> int:
    from harness.sweep.runner import run_sweep

    out = run_sweep(args.file, launcher=args.launcher, dry_run=args.dry_run, detach=args.detach,
                    rerun_failed=args.rerun_failed, force=args.force, max_parallel=args.max_parallel)
    summary = out.get("summary") or {}
    if any(r["state"] == "failed" for r in summary.get("rows", [])):      # a fixed sweep with a failed cell
        return 1
    counts = summary.get("counts")                                         # an Optuna search: no trial completed
    return 1 if counts is not None and not counts.get("complete") else 0


def cmd_status(args) -> int:
    from harness.sweep.status import print_status

    print_status(args.sweep)
    return 0


def add_commands(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``sweep`` and ``status`` to the ``harness`` parser."""
    sp = add("sweep", cmd_sweep, "run a sweep file: validate every cell, skip finished ones, launch the rest", overrides=False)
    sp.add_argument("file", help="sweep YAML, e.g. sweeps/boundary_perturb.yaml (format: harness/sweep/spec.py)")
    sp.add_argument("--launcher", choices=("local", "slurm", "debug"), default=None,
                    help="where tasks run (default: the base config's launcher.name)")
    sp.add_argument("--dry-run", action="store_true", help="validate every cell and print the DAG (and sbatch scripts); run nothing")
    sp.add_argument("--detach", action="store_true", help="submit and return at once; follow with `harness status FILE`")
    sp.add_argument("--rerun-failed", action="store_true", help="also re-run cells whose last attempt failed")
    sp.add_argument("--force", action="store_true", help="re-evaluate every cell (units are still reused by content hash)")
    sp.add_argument("--max-parallel", type=int, default=None, help="tasks at once (local subprocesses / SLURM array throttle)")
    sp = add("status", cmd_status, "per-cell state of a sweep (records, SLURM/submitit, MLflow)", overrides=False)
    sp.add_argument("sweep", help="the sweep file (or its name under sweeps/)")
