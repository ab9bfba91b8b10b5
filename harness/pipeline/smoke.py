"""``harness smoke``: the runs of ``harness/conf/smoke.yaml`` (a tiny monolithic model and a tiny naive split) end to end.

Runs on the CIFAR-10-format stand-in (Fashion-MNIST written in CIFAR-10's pickle layout,
so the real CIFAR-10 loader is exercised), samples, scores with ``fd_smallcnn`` (never
called FID), logs to MLflow and returns one row per run.  With a real CIFAR-10 directory,
``harness smoke data=cifar10 data.root=...`` runs the same thing on the real data.  Which
methods the smoke covers is data (the YAML), so this engine module names none.
"""
from __future__ import annotations

from typing import Any, Sequence

import yaml

from harness.config import CONF_DIR, load
from harness.pipeline.experiment import run_experiment

SMOKE_FILE = CONF_DIR / "smoke.yaml"


def smoke_runs() -> list[list[str]]:
    """The override lists of the smoke's runs."""
    return [list(map(str, run)) for run in yaml.safe_load(SMOKE_FILE.read_text())["runs"]]


def run_smoke(overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every smoke experiment with ``overrides`` applied on top of ``experiment=smoke_cifar10``."""
    cfgs = [load(["experiment=smoke_cifar10", *run, *overrides]) for run in smoke_runs()]  # validate all first
    return [run_experiment(cfg) for cfg in cfgs]
