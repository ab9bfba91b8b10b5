"""Running an Optuna search as a sweep: the study, its workers (ask, run a cell, tell) and the report.

The ``optuna:`` node of a sweep file and its validation are :mod:`harness.sweep.search_spec`.
Each trial is a sweep cell (content-hashed, so a repeated proposal reuses the finished cell and
its units) and an MLflow child run of the sweep's run, tagged with the trial number.  A failed trial
is told to Optuna as FAIL (with its one-line error as a user attribute): recorded, not lost.  Trials
left RUNNING by a worker that died on this host are marked FAIL when a worker starts.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from harness.config import hydra_value
from harness.core.errors import ConfigError
from harness.core.registry import get
from harness.sweep import state
from harness.sweep.load import load_sweep, sweep_run
from harness.sweep.search_progress import SearchProgress
from harness.sweep.search_spec import STICK, search_options, open_storage, ordered_values, storage_url
from harness.sweep.spec import make_cell
from harness.sweep.summary import pick_metric
from harness.sweep.tasks import SweepTask


def study(spec, cfg: Mapping[str, Any]):
    """Create (once) or load the sweep's study; the sampler is seeded."""
    import optuna

    node = search_options(spec)
    sampler = (optuna.samplers.TPESampler(seed=int(node["seed"])) if node["sampler"] == "tpe"
               else optuna.samplers.RandomSampler(seed=int(node["seed"])))
    pruner = optuna.pruners.MedianPruner() if node["pruner"] == "median" else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=spec.name, storage=open_storage(spec, cfg), direction=node["direction"],
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def suggest_overrides(trial, space: Mapping[str, Any]) -> dict[str, str]:
    """Ask the trial for every key of the space; returns Hydra overrides."""
    out = {}
    for key, d in space.items():
        if d["type"] == "float":
            out[key] = hydra_value(trial.suggest_float(key, float(d["low"]), float(d["high"]), log=bool(d.get("log", False))))
        elif d["type"] == "int":
            out[key] = hydra_value(trial.suggest_int(key, int(d["low"]), int(d["high"])))
        elif d["type"] == "categorical":
            out[key] = hydra_value(trial.suggest_categorical(key, list(d["choices"])))
        else:
            x = [trial.suggest_float(f"{key}[{i}]", *STICK) for i in range(int(d["n"]))]
            out[key] = hydra_value(ordered_values(x, float(d["low"]), float(d["high"])))
    return out


def _fail_orphans(st) -> int:
    """Trials RUNNING for a dead process of this host (a crashed worker) become FAIL."""
    import optuna

    n = 0
    for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host == socket.gethostname() and pid and not _alive(int(pid)):
            st.tell(t.number, state=optuna.trial.TrialState.FAIL)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_cell_inline(sweep_dir: Path, cell, sweep_run_id: Optional[str], name: str,
                    tags: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Train the cell's units and evaluate it in this worker (a trial is one GPU job)."""
    state.write_cell_record(sweep_dir, cell.to_dict())
    existing = state.result(sweep_dir, cell.id)
    if existing is not None:
        return existing
    task = SweepTask()
    task("units", str(sweep_dir), cell.id, None, sweep_run_id, name)
    return task("evaluate", str(sweep_dir), cell.id, None, sweep_run_id, name, dict(tags or {}))


def search_worker(sweep_file: str, sweep_dir: str, sweep_run_id: Optional[str], max_trials: Optional[int] = None) -> int:
    """One worker: ask, run, tell, until the study holds ``n_trials`` trials; returns trials it ran."""
    import optuna

    sweep = load_sweep(sweep_file)
    node = search_options(sweep.spec)
    st = study(sweep.spec, sweep.base_cfg)
    _fail_orphans(st)
    ran = 0
    while len(st.get_trials(deepcopy=False)) < int(node["n_trials"]) and (max_trials is None or ran < max_trials):
        trial = st.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        ran += 1
        try:
            overrides = suggest_overrides(trial, node["space"])
            cell = make_cell(sweep.spec, overrides)
            trial.set_user_attr("cell_id", cell.id)
            if node.get("constraint"):
                value = float(get("sweep_constraint", node["constraint"]["key"])(cell.cfg))
                trial.set_user_attr(node["constraint"]["key"], value)
                if value > float(node["constraint"]["max"]):
                    st.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
            res = run_cell_inline(Path(sweep_dir), cell, sweep_run_id, sweep.spec.name,
                                  tags={"harness.optuna_trial": str(trial.number)})
            metric = pick_metric(node.get("metric") or sweep.spec.metric, res.get("metrics", {}))
            if metric is None:
                raise ConfigError(f"optuna.metric: no metric {node.get('metric')!r} in {sorted(res.get('metrics', {}))}")
            trial.set_user_attr("run_id", res["run_id"])
            st.tell(trial, float(res["metrics"][metric]))
        except Exception as err:
            trial.set_user_attr("error", " ".join(str(err).split())[:500])
            st.tell(trial, state=optuna.trial.TrialState.FAIL)
    return ran


def run_search(sweep, launch, *, dry_run: bool = False, echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Run (or, dry, describe) the search with the chosen launcher; then report the distribution."""
    node = search_options(sweep.spec)
    if dry_run:
        echo(f"search {sweep.spec.name}: {node['n_trials']} trials over {', '.join(node['space'])}; "
             f"storage {storage_url(sweep.spec, sweep.base_cfg)}; {node['workers']} worker(s) on {launch.name}")
        return {"sweep": sweep, "stages": [], "before": {}, "outcome": None}
    sweep.dir.mkdir(parents=True, exist_ok=True)
    run_id = sweep_run(sweep)
    study(sweep.spec, sweep.base_cfg)  # created once, before workers start (FINDINGS)
    if node["reference"]:
        ref = make_cell(sweep.spec, {})
        run_cell_inline(sweep.dir, ref, run_id, sweep.spec.name, tags={"harness.optuna_reference": "true"})
    args = (str(Path(sweep.spec.path).resolve()), str(sweep.dir), run_id)
    with SearchProgress(study(sweep.spec, sweep.base_cfg), int(node["n_trials"]), direction=node["direction"],
                        echo=echo) as view:
        outcome = launch.submit_workers(search_worker, args, int(node["workers"]), sweep.dir,
                                        f"{sweep.spec.name}-search", watch=view.watch)
    report = search_report(sweep, echo=echo)
    return {"sweep": sweep, "stages": [], "before": {}, "outcome": outcome, "summary": report}


def search_report(sweep, echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Trials by state, the best, and where the reference (CBS) lands among the completed trials."""
    import optuna

    node = search_options(sweep.spec)
    st = study(sweep.spec, sweep.base_cfg)
    trials = st.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    echo(f"search {sweep.spec.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    out: dict[str, Any] = {"counts": counts, "values": [t.value for t in done]}
    if done:
        best = st.best_trial
        echo(f"best trial #{best.number}: {best.value:.4g} with {best.params}")
        out["best"] = {"number": best.number, "value": best.value, "params": best.params}
    if node["reference"]:
        ref = state.result(sweep.dir, make_cell(sweep.spec, {}).id)
        if ref:
            metric = pick_metric(node.get("metric") or sweep.spec.metric, ref["metrics"])
            value = ref["metrics"][metric]
            better = sum((t.value < value) if node["direction"] == "minimize" else (t.value > value) for t in done)
            out["reference"] = {"value": value, "metric": metric, "trials_better": better, "trials": len(done)}
            echo(f"reference (base config) {metric} = {value:.4g}: {better} of {len(done)} completed trials score better")
    if done:
        out["png"] = str(plot_distribution(out, sweep.dir / "search.png", sweep.spec.name))
        echo(f"plot: {out['png']}")
    return out


def plot_distribution(report: Mapping[str, Any], path: Path, name: str) -> Path:
    """Histogram of the completed trials' scores with the reference (CBS's own split) marked."""
    from harness.core.figures import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=120)
    ax.hist(report["values"], bins=max(5, min(30, len(report["values"]))), color="C0", alpha=0.8, label="trials")
    ref = report.get("reference")
    if ref:
        ax.axvline(ref["value"], color="C3", ls="--", label=f"reference ({ref['trials_better']}/{ref['trials']} better)")
        ax.set_xlabel(ref["metric"])
    ax.set_ylabel("trials")
    ax.set_title(f"search {name}")
    ax.legend(fontsize=8)
    return save_png(fig, path)
