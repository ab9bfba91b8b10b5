"""A small real MLflow store for table and UI tests: tiny gmm_mini runs made by the harness itself."""
from __future__ import annotations

from pathlib import Path

from harness.cli import main

FAST = ["experiment=gmm_mini", "train.steps=20", "train.checkpoint_every=20", "eval.n_samples=200",
        "eval.reference_n=200", "sampler.steps=5", "run.progress=false"]


def store_overrides(workdir: Path) -> list[str]:
    """Overrides that keep units, caches and the SQLite store under ``workdir``."""
    return [f"paths.workdir={workdir}", f"paths.cache={workdir / 'cache'}", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]


RUNS = (["method=monolithic", "train.seed=0"], ["method=monolithic", "train.seed=1"],
        ["method=naive_split", "method.n=2", "train.seed=0"])


def make_mini_store(workdir: Path, sweep: str = "mini_sweep", runs: tuple[list[str], ...] = RUNS) -> dict[str, list[str]]:
    """Monolithic (seeds 0, 1) and naive split N=2 (seed 0), every run tagged ``harness.sweep=<sweep>``.

    Returns {'monolithic': [run ids], 'naive_split': [run ids]}; the tag is set the way a sweep sets it
    (one tag on each experiment run), since the sweep runner is another module.
    """
    from mlflow.tracking import MlflowClient

    base = [*FAST, *store_overrides(workdir)]
    for extra in runs:
        assert main(["run", *base, *extra]) == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("harness")
    out: dict[str, list[str]] = {"monolithic": [], "naive_split": []}
    for r in client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'experiment'"):
        client.set_tag(r.info.run_id, "harness.sweep", sweep)
        out[r.data.params["method.name"]].append(r.info.run_id)
    return out
