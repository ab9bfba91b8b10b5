"""``harness smoke``: a tiny monolithic model and a tiny naive split (N=2) end to end.

Runs on the CIFAR-10-format stand-in (Fashion-MNIST written in CIFAR-10's pickle layout,
so the real CIFAR-10 loader is exercised), samples, scores with ``fd_smallcnn`` (never
called FID), logs to MLflow and returns one row per run.  With a real CIFAR-10 directory,
``harness smoke data=cifar10 data.root=...`` runs the same thing on the real data.
"""
from __future__ import annotations

from typing import Any, Sequence

from harness.config import load
from harness.experiment import run_experiment

SMOKE_RUNS = (["method=monolithic"], ["method=naive_split", "method.n=2"])


def run_smoke(overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run both smoke experiments with ``overrides`` applied on top of ``experiment=smoke_cifar10``."""
    cfgs = [load(["experiment=smoke_cifar10", *run, *overrides]) for run in SMOKE_RUNS]  # validate both first
    return [run_experiment(cfg) for cfg in cfgs]
