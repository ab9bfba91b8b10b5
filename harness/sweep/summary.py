"""The sweep's summary: one row per cell (config delta, state, metric, MLflow run id), unit reuse
totals, and a PNG of the metric for 1-D / 2-D sweeps (e.g. metric vs boundary perturbation delta).

Rows are built from the records on disk only, so ``harness status`` and the end of ``harness sweep``
print the same table.  Metrics keep their protocol names (``fd_raw_2000``, ``fd_smallcnn_256``):
a Fréchet distance is only called FID when it came from the Inception-V3 extractor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from harness.core.stats import ci95, pareto_front
from harness.sweep import state

SEED_KEY = "train.seed"          # cells that differ only in it are one setting: mean and 95 % CI over seeds
COST_KEY = "gflops_per_image"    # of the result record's cost (torch's count, 2 FLOPs per multiply-add)


def pick_metric(wanted: Optional[str], metrics: Mapping[str, float], *, count_suffix: bool = False) -> Optional[str]:
    """The one rule that turns a configured metric into a logged name: an exact name, else the first (sorted)
    name ``wanted_...`` (default "fd": ``fd`` finds ``fd_cnn_fashion_mnist_5000``).  ``count_suffix``: only
    ``wanted_<n>``, the sample count that is part of every sample-based name (a report's metric is named up
    to its count, so ``fd_cnn`` must not pick ``fd_cnn_fashion_mnist_5000``)."""
    if wanted and wanted in metrics:
        return wanted
    prefix = f"{wanted or 'fd'}_"
    return next((k for k in sorted(metrics) if k.startswith(prefix)
                 and (not count_suffix or k[len(prefix):][:1].isdigit())), None)


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
                     "gflops": (res.get("cost") or {}).get(COST_KEY),
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
    console = Console()
    if not console.is_terminal:   # logs and pipes: one unwrapped line per cell; a terminal gets a table of its width
        console = Console(width=200)
    console.print(table)
    counts = {s: sum(r["state"] == s for r in rows) for s in state.STATES}
    tot = unit_totals(rows)
    echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
         f"; units: {tot['trained']} trained, {tot['reused']} reused of {tot['slots']} unit slots")


def _axis_value(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def settings(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Finished cells grouped by their delta without ``train.seed``: delta, values, mean, CI half-width, n, GFLOPs."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["value"] is None:
            continue
        delta = {k: v for k, v in r["delta"].items() if k != SEED_KEY}
        g = groups.setdefault(json_key(delta), {"delta": delta, "values": [], "gflops": []})
        g["values"].append(float(r["value"]))
        if r.get("gflops") is not None:
            g["gflops"].append(float(r["gflops"]))
    out = []
    for g in groups.values():
        mean, half = ci95(g["values"])
        out.append({**g, "mean": mean, "ci": half, "n": len(g["values"]),
                    "gflops": (sum(g["gflops"]) / len(g["gflops"])) if g["gflops"] else None})
    return out


def json_key(d: Mapping[str, Any]) -> str:
    import json

    return json.dumps(d, sort_keys=True, default=str)


def summary_figure(sweep, rows: Sequence[Mapping[str, Any]]):
    """The sweep's figure, or None when no cell has finished: (figure, {panel name: axes}).

    ``metric``: the metric vs ``plot.x`` (default: the grid's first key other than ``train.seed``; the settings
    side by side when there is none), one line per ``plot.hue``; a setting run with several seeds is its mean
    with a 95 % Student-t interval (``harness.core.stats.ci95``).  ``cost``: where settings differ in GFLOPs per
    image, the metric against it, each setting labelled, with the Pareto front (lower is better for both).
    """
    pts = settings(rows)
    if not pts:
        return None
    from harness.core.figures import pyplot

    keys = [k for k in sweep.spec.grid if k != SEED_KEY]
    x = sweep.spec.plot.get("x") or (keys[0] if keys else None)
    hue = sweep.spec.plot.get("hue") or (keys[1] if len(keys) > 1 else None)
    if x is not None and not all(x in p["delta"] for p in pts):
        x = None
    costs = {round(p["gflops"], 9) for p in pts if p["gflops"] is not None}
    panels = ["metric"] + (["cost"] if len(costs) > 1 else [])
    metric = next(r["metric"] for r in rows if r["value"] is not None)
    seeds = max(p["n"] for p in pts)
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), dpi=120, squeeze=False)
    ax = dict(zip(panels, axes[0]))
    _metric_panel(ax["metric"], pts, x, hue, metric)
    if "cost" in ax:
        _cost_panel(ax["cost"], [p for p in pts if p["gflops"] is not None], metric)
    over = f"mean ± 95 % CI over {seeds} seeds" if seeds > 1 else "one seed per setting"
    fig.suptitle(f"sweep {sweep.spec.name}: {metric} ({over})", fontsize=10)
    return fig, ax


def _yerr(pts: Sequence[Mapping[str, Any]]) -> list[float]:
    return [p["ci"] if p["ci"] is not None else 0.0 for p in pts]


def _metric_panel(ax, pts: list[dict[str, Any]], x: Optional[str], hue: Optional[str], metric: str) -> None:
    if x is None:   # no axis to plot along: the settings side by side
        labels = [delta_text(p["delta"]) for p in pts]
        ax.errorbar(range(len(pts)), [p["mean"] for p in pts], yerr=_yerr(pts), fmt="o", capsize=4)
        ax.set_xticks(range(len(pts)), labels, rotation=20, fontsize=7, ha="right")
    else:
        shared = [p for p in pts if hue and str(p["delta"].get(hue)) == "-"]
        groups: dict[str, list] = {}
        for p in pts:
            if p not in shared:
                groups.setdefault(str(p["delta"].get(hue, "")) if hue else "", []).append(p)
        categorical = any(isinstance(_axis_value(p["delta"][x]), str) for p in pts)
        ticks = sorted({str(p["delta"][x]) for p in pts}) if categorical else None
        for name, members in sorted(groups.items()) or [("", [])]:
            line = sorted(members + shared, key=lambda p: str(p["delta"][x]) if categorical else _axis_value(p["delta"][x]))
            xs = [ticks.index(str(p["delta"][x])) if categorical else _axis_value(p["delta"][x]) for p in line]
            ax.errorbar(xs, [p["mean"] for p in line], yerr=_yerr(line), fmt="o-", capsize=4,
                        label=f"{hue}={name}" if hue else None)
        if categorical:
            ax.set_xticks(range(len(ticks)), ticks, rotation=20, fontsize=7)
        ax.set_xlabel(x)
        if hue:
            ax.legend(fontsize=8)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def _cost_panel(ax, pts: list[dict[str, Any]], metric: str) -> None:
    ax.errorbar([p["gflops"] for p in pts], [p["mean"] for p in pts], yerr=_yerr(pts), fmt="o", capsize=4)
    for p in pts:
        ax.annotate(delta_text(p["delta"]), (p["gflops"], p["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = [pts[i] for i in pareto_front([(p["gflops"], p["mean"]) for p in pts])]
    if len(front) > 1:
        ax.step([p["gflops"] for p in front], [p["mean"] for p in front], where="post", color="C3", lw=1,
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"GFLOPs per image ({COST_KEY})")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title("quality vs cost", fontsize=9)
    ax.margins(x=0.18, y=0.1)   # room for the labels of the outermost points
    ax.grid(alpha=0.3)


def plot(sweep, rows: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Write :func:`summary_figure` to ``path``; None when no cell has finished."""
    made = summary_figure(sweep, rows)
    if made is None:
        return None
    from harness.core.figures import save_png

    return save_png(made[0], path)


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
