"""Sweep files: a base experiment plus the cells to run, each a fully resolved, validated config.

Format of ``sweeps/NAME.yaml`` (every key but ``base`` is optional; unknown keys are errors)::

    name: boundary_perturb          # default: the file's stem; names the sweep's folder and MLflow run
    description: "seed 000, Table 5: perturb each CBS boundary by +-delta"
    base:                           # Hydra overrides shared by every cell: a list of strings ...
      - experiment=gmm_mini
      - method=cbs
    #   ... or a mapping {key: value}, e.g. {experiment: gmm_mini, train.steps: 200}
    grid:                           # Cartesian product: key -> list of values (an empty list is an error)
      method.n: [2, 3]
      train.seed: [0, 1, 2]
    list:                           # explicit cells: each a list of override strings or a {key: value} mapping
      - [method=naive_split]
      - {method: cbs, method.monitor: dirichlet}
    derive:                         # cells computed from a derived quantity (registered "sweep_deriver")
      name: cbs_boundary_perturb    # see harness/sweep/derive.py
      deltas: [-0.05, 0.05]
    optuna:                         # a search instead of a fixed list (harness/sweep/search.py)
      metric: fd_raw_2000
      direction: minimize
      n_trials: 20
      space: {method.boundaries: {type: ordered, n: 2, low: 0.02, high: 0.98}}
    metric: fd                      # metric shown in the summary: a name, or a prefix ("fd" -> fd_raw_2000)
    plot: {x: delta, hue: boundary} # optional: columns of the cells' labels for the PNG (1-D / 2-D sweeps)
    report: {...}                   # optional: the reproduction report's table spec (harness/sweep/report_spec.py)

Cells: the list entries (or one empty cell) crossed with the grid (or one empty point), plus the
derived cells.  A cell is ``base + cell overrides`` as Hydra override strings (so ``method=naive_split``
and ``method.n=3`` both work), composed and validated with :func:`harness.config.load` before anything
is submitted.  Its id is the content hash of the resolved config minus the keys that cannot change a
result (:func:`cell_id`), so a re-run skips finished cells (STYLE practice 9).
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from harness.config import hydra_value
from harness.core.errors import ConfigError
from harness.core.registry import suggest
from harness.sweep.report_spec import check_report
from harness.train.units import NON_WEIGHT_BACKBONE_KEYS, NON_WEIGHT_TRAIN_KEYS, objective_identity
from harness.core.hashing import content_hash

SWEEP_KEYS = ("name", "description", "base", "grid", "list", "derive", "optuna", "metric", "plot", "report")
# config nodes that cannot change a result: bookkeeping, where files go, how jobs are launched
NON_RESULT_NODES = ("run", "tracking", "launcher", "paths")
CELL_HASH_VERSION = 1


@dataclasses.dataclass
class Cell:
    """One experiment of a sweep: its overrides, its resolved config and its content id."""

    overrides: list[str]            # base + cell overrides, in order (Hydra strings)
    delta: dict[str, Any]           # what distinguishes this cell from the base (for tables and plots)
    cfg: dict[str, Any]             # resolved, validated config
    id: str                         # cell_id(cfg)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "overrides": self.overrides, "delta": self.delta}


@dataclasses.dataclass
class SweepSpec:
    """A parsed sweep file (not yet expanded into cells)."""

    path: Path
    name: str
    description: str
    base: list[str]
    grid: dict[str, list[Any]]
    entries: list[dict[str, Any]]     # explicit cells as {key: value} (values already Hydra-formatted strings)
    derive: Optional[dict[str, Any]]
    optuna: Optional[dict[str, Any]]
    metric: Optional[str]
    plot: dict[str, Any]
    report: Optional[dict[str, Any]] = None   # checked table spec (harness.sweep.report_spec), or None


def _as_overrides(where: str, obj: Any) -> dict[str, str]:
    """A list of ``KEY=VALUE`` strings or a {key: value} mapping -> ordered {key: hydra value}."""
    if isinstance(obj, Mapping):
        return {str(k): hydra_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out: dict[str, str] = {}
        for item in obj:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{where}: {item!r} is not a KEY=VALUE override string",
                                  hint="write e.g. method.n=3, or use a {key: value} mapping")
            key, value = item.split("=", 1)
            out[key] = value
        return out
    raise ConfigError(f"{where}: expected a list of KEY=VALUE strings or a mapping, got {type(obj).__name__}")


def read_spec(path: Path | str) -> SweepSpec:
    """Parse a sweep file; unknown top-level keys, empty grids and malformed cells are ConfigErrors."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep file {path} does not exist", hint="pass a file such as sweeps/boundary_perturb.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{path}: {key}: unknown sweep key.{suggest(str(key), SWEEP_KEYS)} Known: {', '.join(SWEEP_KEYS)}")
    if "base" not in raw:
        raise ConfigError(f"{path}: base: missing", hint="add base: [experiment=...] (the overrides every cell shares)")
    base = _as_overrides(f"{path}: base", raw["base"] or [])
    grid: dict[str, list[Any]] = {}
    if "grid" in raw:
        if not isinstance(raw["grid"], Mapping) or not raw["grid"]:
            raise ConfigError(f"{path}: grid: empty", hint="give at least one key with a list of values, or drop grid:")
        for key, values in raw["grid"].items():
            if not isinstance(values, (list, tuple)) or len(values) == 0:
                raise ConfigError(f"{path}: grid.{key}: expected a non-empty list of values, got {values!r}")
            grid[str(key)] = [hydra_value(v) for v in values]
    entries = []
    if "list" in raw:
        if not isinstance(raw["list"], (list, tuple)) or not raw["list"]:
            raise ConfigError(f"{path}: list: expected a non-empty list of cells")
        entries = [_as_overrides(f"{path}: list[{i}]", item) for i, item in enumerate(raw["list"])]
    for key in ("derive", "optuna", "plot"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{path}: {key}: expected a mapping, got {type(raw[key]).__name__}")
    name = str(raw.get("name") or path.stem)
    return SweepSpec(path=path, name=name, description=str(raw.get("description") or ""),
                     base=[f"{k}={v}" for k, v in base.items()], grid=grid, entries=entries,
                     derive=dict(raw["derive"]) if raw.get("derive") else None,
                     optuna=dict(raw["optuna"]) if raw.get("optuna") else None,
                     metric=raw.get("metric"), plot=dict(raw.get("plot") or {}),
                     report=check_report(path, name, raw.get("report")))


def result_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that can change a cell's result (what :func:`cell_id` hashes)."""
    out = {k: v for k, v in cfg.items() if k not in NON_RESULT_NODES}
    if "train" in out:
        out["train"] = {k: v for k, v in out["train"].items() if k not in NON_WEIGHT_TRAIN_KEYS}
    if "backbone" in out:
        out["backbone"] = {k: v for k, v in out["backbone"].items() if k not in NON_WEIGHT_BACKBONE_KEYS}
    if "eval" in out:
        out["eval"] = {k: v for k, v in out["eval"].items() if k != "device"}   # where scoring runs, not its result
    if "objective" in out:
        out["objective"] = objective_identity(out["objective"], sampling_keys=True)   # a default added later: same id
    return out


def cell_id(cfg: Mapping[str, Any]) -> str:
    """Content id of a cell: the hash of its result-relevant config (stable across runs and machines)."""
    return content_hash({"cell_hash_version": CELL_HASH_VERSION, "config": result_config(cfg)})


def make_cell(spec: SweepSpec, overrides: Mapping[str, str], label: Optional[Mapping[str, Any]] = None) -> Cell:
    """Compose and validate one cell; a bad key names the sweep file and the cell.

    ``label`` replaces the overrides as the cell's description (derived cells: {boundary, delta}).
    """
    from harness.config import load

    full = [*spec.base, *(f"{k}={v}" for k, v in overrides.items())]
    try:
        cfg = load(full)
    except ConfigError as err:
        shown = " ".join(f"{k}={v}" for k, v in overrides.items()) or "(base)"
        raise ConfigError(f"{spec.path}: cell {shown}: {err.one_line()}") from None
    return Cell(overrides=full, delta=dict(label if label is not None else overrides), cfg=cfg, id=cell_id(cfg))


def expand(spec: SweepSpec, *, derived: Sequence[tuple[Mapping[str, str], Mapping[str, Any]]] = ()) -> list[Cell]:
    """Every cell of the sweep, validated before any runs; duplicates (same id) are kept once.

    ``derived``: (overrides, label) pairs from the sweep's deriver (:mod:`harness.sweep.derive`).
    """
    entries = spec.entries or ([{}] if spec.grid or not derived else [])
    points = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())] if spec.grid else [{}]
    pairs = [(dict(e, **p), None) for e in entries for p in points] + [(dict(o), dict(l)) for o, l in derived]
    if not pairs:
        raise ConfigError(f"{spec.path}: no cells", hint="add grid:, list: or derive:")
    cells: dict[str, Cell] = {}
    for overrides, label in pairs:
        cell = make_cell(spec, overrides, label)
        cells.setdefault(cell.id, cell)
    return list(cells.values())


def sweep_dir(spec: SweepSpec, cells: Sequence[Cell]) -> Path:
    """``<workdir>/sweeps/<name>``: the sweep's state lives beside the units its cells share."""
    workdirs = {c.cfg["paths"]["workdir"] for c in cells}
    if len(workdirs) > 1:
        raise ConfigError(f"{spec.path}: paths.workdir differs between cells ({', '.join(sorted(workdirs))})",
                          hint="cells share units only within one workdir; set paths.workdir in base")
    return Path(workdirs.pop()) / "sweeps" / spec.name
