"""Optuna searches as sweeps: ``optuna:`` in a sweep file instead of (or beside) a fixed cell list.

Keys of the ``optuna:`` node (unknown keys are errors)::

    metric: fd                   # name or prefix of the metric to optimise (as ``metric:`` of the sweep)
    direction: minimize          # minimize | maximize
    n_trials: 20                 # trials in all, over every worker (failed and pruned ones count)
    sampler: tpe                 # tpe | random
    pruner: none                 # none | median (trials report their final value only, so median
                                 #   pruning acts between trials, not inside one)
    seed: 0                      # sampler seed
    workers: 1                   # local: worker subprocesses; slurm: worker jobs, one per GPU job
    storage: null                # null: JournalStorage file next to the MLflow store; or an RDB URL
    reference: false             # true: also run the base config as a cell and place it in the
                                 #   distribution of trial scores (split_search: CBS's own boundaries)
    space:                       # override key -> distribution
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      method.n: {type: int, low: 2, high: 4}
      method.monitor: {type: categorical, choices: [acceleration, dirichlet]}
      method.boundaries: {type: ordered, n: 2, low: 0.02, high: 0.98}
    constraint: {key: NAME, max: 0.09}   # a registered "sweep_constraint" fn(cfg) -> float; trials
                                         #   above max are pruned before anything runs

``ordered``: N−1 boundaries by stick-breaking, b_i = b_{i−1} + (high − b_{i−1})·x_i with
x_i ∈ [0.02, 0.98] (one Optuna float per boundary), so every proposal is strictly increasing and
no trial is wasted on an invalid split (seed 000, Table 5 asks whether CBS's split is optimal).

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

from harness.errors import ConfigError
from harness.registry import get, suggest
from harness.sweep import state
from harness.sweep.spec import hydra_value, make_cell

OPTUNA_KEYS = ("metric", "direction", "n_trials", "sampler", "pruner", "seed", "workers", "storage", "reference",
               "space", "constraint")
SPACE_TYPES = ("float", "int", "categorical", "ordered")
STICK = (0.02, 0.98)


def _opt(spec) -> dict[str, Any]:
    node = dict(spec.optuna)
    node.setdefault("direction", "minimize")
    node.setdefault("sampler", "tpe")
    node.setdefault("pruner", "none")
    node.setdefault("seed", 0)
    node.setdefault("workers", 1)
    node.setdefault("reference", False)
    return node


def check_search(spec, base_cfg: Mapping[str, Any]) -> None:
    """Validate the optuna node, its space (every key is validated on a midpoint cell) and its storage."""
    where = f"{spec.path}: optuna"
    node = _opt(spec)
    for key in node:
        if key not in OPTUNA_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key.{suggest(key, OPTUNA_KEYS)} Known: {', '.join(OPTUNA_KEYS)}")
    if node["direction"] not in ("minimize", "maximize"):
        raise ConfigError(f"{where}.direction must be minimize or maximize, got {node['direction']!r}")
    if not isinstance(node.get("n_trials"), int) or node["n_trials"] < 1:
        raise ConfigError(f"{where}.n_trials must be a positive integer, got {node.get('n_trials')!r}")
    if node["sampler"] not in ("tpe", "random") or node["pruner"] not in ("none", "median"):
        raise ConfigError(f"{where}: sampler must be tpe|random and pruner none|median, got {node['sampler']!r}, {node['pruner']!r}")
    space = node.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where}.space: empty", hint="give at least one key: {type: float, low: .., high: ..}")
    for key, dist in space.items():
        if not isinstance(dist, Mapping) or dist.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{where}.space.{key}: expected {{type: {'|'.join(SPACE_TYPES)}, ...}}, got {dist!r}")
        need = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",), "ordered": ("n", "low", "high")}
        missing = [k for k in need[dist["type"]] if k not in dist]
        if missing:
            raise ConfigError(f"{where}.space.{key}.{missing[0]}: required for type {dist['type']}")
    if node.get("constraint") is not None:
        c = node["constraint"]
        if not isinstance(c, Mapping) or set(c) != {"key", "max"}:
            raise ConfigError(f"{where}.constraint: expected {{key: NAME, max: VALUE}}, got {c!r}")
        try:
            get("sweep_constraint", c["key"])
        except ConfigError as err:
            raise ConfigError(f"{where}.constraint.key: {err.one_line()}",
                              hint="register fn(cfg) -> float with @register('sweep_constraint', NAME)") from None
    make_cell(spec, midpoint_overrides(space))   # every space key exists and validates
    open_storage(spec, base_cfg)                 # storage opens (or a one-line error), before any trial


def midpoint_overrides(space: Mapping[str, Any]) -> dict[str, str]:
    """A valid point of the space (for validation and dry runs)."""
    out = {}
    for key, d in space.items():
        if d["type"] == "categorical":
            out[key] = hydra_value(d["choices"][0])
        elif d["type"] == "ordered":
            out[key] = hydra_value(ordered_values([0.5] * int(d["n"]), float(d["low"]), float(d["high"])))
        elif d["type"] == "int":
            out[key] = hydra_value((int(d["low"]) + int(d["high"])) // 2)
        else:
            out[key] = hydra_value((float(d["low"]) + float(d["high"])) / 2)
    return out


def ordered_values(x: list[float], low: float, high: float) -> list[float]:
    """Stick-breaking: strictly increasing values in (low, high) from fractions x_i in (0, 1)."""
    out, prev = [], low
    for xi in x:
        prev = prev + (high - prev) * xi
        out.append(round(prev, 6))
    return out


def storage_url(spec, cfg: Mapping[str, Any]) -> str:
    """Configured storage, or ``journal:<dir of the MLflow store>/optuna/<sweep>.journal``."""
    configured = _opt(spec).get("storage")
    if configured:
        return str(configured)
    uri = cfg["tracking"]["uri"]
    base = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else Path(cfg["paths"]["workdir"])
    return f"journal:{base / 'optuna' / (spec.name + '.journal')}"


def open_storage(spec, cfg: Mapping[str, Any]):
    """An Optuna storage; a path or URL that cannot be opened is a one-line ConfigError."""
    import optuna

    url = storage_url(spec, cfg)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url)
    except Exception as err:
        raise ConfigError(f"{spec.path}: optuna.storage: cannot open {url}: {' '.join(str(err).split())[:200]}",
                          hint="use null (a journal file next to the MLflow store) or a reachable RDB URL") from None


def study(spec, cfg: Mapping[str, Any]):
    """Create (once) or load the sweep's study; the sampler is seeded."""
    import optuna

    node = _opt(spec)
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
    from harness.sweep.tasks import SweepTask

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

    from harness.sweep.runner import load_sweep
    from harness.sweep.summary import pick_metric

    sweep = load_sweep(sweep_file)
    node = _opt(sweep.spec)
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
    from harness.launch.base import Outcome
    from harness.sweep.runner import sweep_run

    node = _opt(sweep.spec)
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
    outcome = launch_workers(launch, sweep, args, int(node["workers"]))
    report = search_report(sweep, echo=echo)
    return {"sweep": sweep, "stages": [], "before": {}, "outcome": outcome, "summary": report}


def launch_workers(launch, sweep, args: tuple, workers: int):
    """Workers through the launcher: in-process (debug), submitit subprocesses (local), SLURM jobs."""
    from harness.launch.base import Outcome

    if launch.name == "debug":
        search_worker(*args)
        return Outcome()
    import submitit

    if launch.name == "local":
        ex = submitit.LocalExecutor(folder=str(sweep.dir / "submitit"))
        from harness.launch.local import LOCAL_TIMEOUT_MIN

        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    else:
        from harness.launch.slurm import sbatch_parameters

        ex = submitit.SlurmExecutor(folder=str(sweep.dir / "submitit" / "%j"))
        ex.update_parameters(**sbatch_parameters(launch.profile, job_name=f"{sweep.spec.name}-search", dependency=None,
                                                 array_parallelism=workers))
    jobs = [ex.submit(search_worker, *args) for _ in range(workers)]
    out = Outcome(jobs={"search": [j.job_id for j in jobs]})
    for j in jobs:
        try:
            j.result()
        except Exception as err:  # a crashed worker: its trial is marked FAIL by the next worker start
            from harness.launch.base import error_line

            out.errors.append((None, error_line(err).splitlines()[0]))
    return out


def search_report(sweep, echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Trials by state, the best, and where the reference (CBS) lands among the completed trials."""
    import optuna

    node = _opt(sweep.spec)
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
        from harness.sweep.summary import pick_metric

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
    from harness.figures import pyplot, save_png

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
