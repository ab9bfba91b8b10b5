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

from pathlib import Path
from typing import Any, Mapping

from harness.config import hydra_value
from harness.core.errors import ConfigError
from harness.core.registry import get, suggest
from harness.sweep.spec import make_cell

OPTUNA_KEYS = ("metric", "direction", "n_trials", "sampler", "pruner", "seed", "workers", "storage", "reference",
               "space", "constraint")
SPACE_TYPES = ("float", "int", "categorical", "ordered")
STICK = (0.02, 0.98)


def search_options(spec) -> dict[str, Any]:
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
    node = search_options(spec)
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
    configured = search_options(spec).get("storage")
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
