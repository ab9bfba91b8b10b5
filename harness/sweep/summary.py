"""The sweep's summary: one row per cell (config delta, state, metric, MLflow run id), unit reuse
totals, and a PNG of the metric for 1-D / 2-D sweeps (e.g. metric vs boundary perturbation delta).

Rows are built from the records on disk only, so ``harness status`` and the end of ``harness sweep``
print the same table.  Metrics keep their protocol names (``fd_raw_2000``, ``fd_smallcnn_256``):
a Fréchet distance is only called FID when it came from the Inception-V3 extractor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from harness.sweep import state


def pick_metric(wanted: Optional[str], metrics: Mapping[str, float]) -> Optional[str]:
    """The metric to show: an exact name, else the first name starting with ``wanted`` (default "fd")."""
    if wanted and wanted in metrics:
        return wanted
    prefix = f"{wanted or 'fd'}_"
    return next((k for k in sorted(metrics) if k.startswith(prefix)), None)


def cell_rows(sweep) -> list[dict[str, Any]]:
    """One dict per cell: id, delta, state, metric name and value, run id, units trained/reused, error."""
    rows = []
    for cell in sweep.cells:
        res = state.result(sweep.dir, cell.id) or {}
        fail = state.failure(sweep.dir, cell.id) or {}
        units = state.read_json(state.cell_dir(sweep.dir, cell.id) / "units.json") or {"trained": [], "reused": []}
        metric = pick_metric(sweep.spec.metric, res.get("metrics", {}))
        rows.append({"id": cell.id, "delta": cell.delta, "state": state.cell_state(sweep.dir, cell.id),
                     "metric": metric, "value": res.get("metrics", {}).get(metric) if metric else None,
                     "run_id": res.get("run_id", "-"), "units": res.get("units", {}),
                     "trained": units["trained"], "reused": units["reused"], "error": fail.get("error", "")})
    return rows


def unit_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Unit slots over the cells, distinct units trained by this sweep, and slots served by reuse."""
    slots = sum(len(r["units"]) for r in rows if r["units"])
    trained = set().union(*[set(r["trained"]) for r in rows]) if rows else set()
    return {"slots": slots, "trained": len(trained), "reused": max(0, slots - len(trained))}


def delta_text(delta: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in delta.items() if k not in ("boundaries", "source")}
    if "boundaries" in delta:
        shown["boundaries"] = "[" + ", ".join(f"{b:.4g}" for b in delta["boundaries"]) + "]"
    return " ".join(f"{k}={v}" for k, v in shown.items()) or "(base)"


def print_table(sweep, rows: Sequence[Mapping[str, Any]], echo: Callable[..., Any] = print) -> None:
    """A rich table of the cells, then one line of totals (cells per state, unit reuse)."""
    from rich.console import Console
    from rich.table import Table

    metric = next((r["metric"] for r in rows if r["metric"]), sweep.spec.metric or "metric")
    table = Table(title=f"sweep {sweep.spec.name} ({len(rows)} cells)")
    for col in ("cell", "config delta", "state", metric, "units new/reused", "MLflow run"):
        table.add_column(col, justify="right" if col == metric else "left")
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        state_txt = r["state"] if not r["error"] or r["state"] != "failed" else f"failed: {r['error'][:60]}"
        table.add_row(r["id"], delta_text(r["delta"]), state_txt, value, f"{len(r['trained'])}/{len(r['reused'])}",
                      r["run_id"])
    Console(width=200).print(table)
    counts = {s: sum(r["state"] == s for r in rows) for s in state.STATES}
    tot = unit_totals(rows)
    echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
         f"; units: {tot['trained']} trained, {tot['reused']} reused of {tot['slots']} unit slots")


def _axis_value(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def plot(sweep, rows: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Metric vs ``plot.x`` (one line per ``plot.hue``); defaults to the grid's first one or two keys.

    A cell whose hue is ``-`` (the unperturbed base of a perturbation sweep) joins every line.
    Returns None when there is nothing to plot (no finished cell, or no x key).
    """
    keys = list(sweep.spec.grid)
    x = sweep.spec.plot.get("x") or (keys[0] if keys else None)
    hue = sweep.spec.plot.get("hue") or (keys[1] if len(keys) > 1 else None)
    done = [r for r in rows if r["value"] is not None and x in r["delta"]]
    if x is None or not done:
        return None
    from harness.core.figures import pyplot, save_png

    plt = pyplot()

    groups: dict[str, list] = {}
    shared = [r for r in done if hue and str(r["delta"].get(hue)) == "-"]
    for r in done:
        if r in shared:
            continue
        groups.setdefault(str(r["delta"].get(hue, "")) if hue else "", []).append(r)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for name, members in sorted(groups.items()) or [("", [])]:
        pts = sorted(((_axis_value(r["delta"][x]), r["value"]) for r in members + shared), key=lambda p: str(p[0]) if isinstance(p[0], str) else p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{hue}={name}" if hue else None)
    ax.set_xlabel(x)
    ax.set_ylabel(done[0]["metric"])
    ax.set_title(f"sweep {sweep.spec.name}")
    if hue:
        ax.legend(fontsize=8)
    return save_png(fig, path)


def finish_summary(sweep, run_id: Optional[str], echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Print the table, write the PNG, and record both (plus totals) in the sweep's MLflow run."""
    rows = cell_rows(sweep)
    print_table(sweep, rows, echo)
    png = plot(sweep, rows, sweep.dir / "summary.png")
    if png:
        echo(f"plot: {png}")
    totals = unit_totals(rows)
    if run_id:
        from harness.track import Tracker

        cfg = sweep.base_cfg
        tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])
        tracker.log_dict(run_id, {"rows": rows, "units": totals}, "sweep_summary.json")
        tracker.log_metrics(run_id, {"cells_finished": sum(r["state"] == "finished" for r in rows),
                                     "cells_failed": sum(r["state"] == "failed" for r in rows),
                                     "units_trained": totals["trained"], "units_reused": totals["reused"]})
        if png:
            tracker.log_artifact(run_id, png, "plots")
        all_done = all(r["state"] == "finished" for r in rows)
        tracker.end_run(run_id, status="FINISHED" if all_done else "FAILED")
    return {"rows": rows, "units": totals, "png": str(png) if png else None}
