"""``harness status SWEEP``: per-cell state from the records, SLURM/submitit job states and MLflow.

Reads only: a sweep that is still running (locally or on SLURM) is not disturbed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from harness.core.errors import ConfigError
from harness.sweep import state


def resolve_file(name: str) -> Path:
    """A sweep file path, or a bare name looked up under ``sweeps/``."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (Path("sweeps") / name, Path("sweeps") / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"status: sweep {name!r} not found", hint="pass the sweep file, e.g. sweeps/boundary_perturb.yaml")


def slurm_states(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """{stage: {job id: state}} for the jobs recorded in jobs.json (sacct through submitit)."""
    jobs = state.read_json(sweep_dir / "jobs.json") or {}
    if jobs.get("launcher") != "slurm":
        return {}
    import submitit

    out: dict[str, dict[str, str]] = {}
    for stage, ids in jobs.items():
        if stage == "launcher" or not isinstance(ids, list):
            continue
        for job_id in ids:
            try:
                out.setdefault(stage, {})[job_id] = submitit.SlurmJob(folder=sweep_dir / "submitit" / "%j", job_id=job_id).state
            except Exception as err:  # sacct missing or job forgotten: report, do not crash status
                out.setdefault(stage, {})[job_id] = f"UNKNOWN ({type(err).__name__})"
    return out


def mlflow_states(sweep, rows) -> dict[str, str]:
    """{run id: MLflow status} for the cells' runs."""
    from harness.track import Tracker

    cfg = sweep.base_cfg
    client = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"]).client
    out = {}
    for r in rows:
        if r["run_id"] and r["run_id"] != "-":
            try:
                out[r["run_id"]] = client.get_run(r["run_id"]).info.status
            except Exception:
                out[r["run_id"]] = "missing"
    return out


def recorded_sweep(path: Path):
    """The sweep as its last run recorded it (sweep.json), without re-deriving cells; None if never run.

    Status must describe what was launched: re-deriving (e.g. CBS boundaries after the code changed)
    could name other cells.
    """
    from harness.config import load
    from harness.sweep.load import Sweep
    from harness.sweep.spec import Cell, read_spec

    spec = read_spec(path)
    try:
        base_cfg = load(spec.base)
    except ConfigError:
        return None
    sdir = Path(base_cfg["paths"]["workdir"]) / "sweeps" / spec.name
    record = state.read_json(sdir / "sweep.json")
    if record is None:
        return None
    cells = [Cell(overrides=c["overrides"], delta=c["delta"], cfg={}, id=c["id"]) for c in record["cells"]]
    return Sweep(spec, base_cfg, cells, sdir)


def print_status(name: str, echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Print the cell table, MLflow statuses and SLURM job states; returns them."""
    from harness.sweep.load import load_sweep
    from harness.sweep.summary import cell_rows, plot, print_table

    sweep = recorded_sweep(resolve_file(name)) or load_sweep(resolve_file(name))
    rows = cell_rows(sweep)
    runs = mlflow_states(sweep, rows)
    for r in rows:
        if r["run_id"] in runs and runs[r["run_id"]] != "FINISHED":
            r["state"] = f"{r['state']} (MLflow {runs[r['run_id']]})"
    print_table(sweep, rows, echo)
    jobs = slurm_states(sweep.dir)
    for stage, states in jobs.items():
        echo(f"SLURM {stage}: " + ", ".join(f"{j}={s}" for j, s in states.items()))
    png = plot(sweep, rows, sweep.dir / "summary.png")
    if png:
        echo(f"plot: {png}")
    search = None
    if sweep.spec.optuna:
        from harness.sweep.search import search_report

        search = search_report(sweep, echo=echo)
    return {"rows": rows, "mlflow": runs, "slurm": jobs, "search": search}
