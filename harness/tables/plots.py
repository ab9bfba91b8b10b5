"""PNG plots of runs (matplotlib Agg): generic line / Pareto plots, and the sweeps' standard figures.

The standard figures read the runs DataFrame of :mod:`harness.tables.runs`: quality vs N (naive vs CBS,
seed 000 Tab. 4), quality vs boundary perturbation (seed 000 Tab. 5), quality vs GFLOPs per NFE (the
guidance Pareto front, seed 004 Tab. 2).  The y-axis is labelled with the metric's own protocol
(FID only for Inception-V3 features).  The monitor curve (and its cumulative, Fig. 2) is ``harness.pipeline.split.plot_split`` and the
sample grid ``harness.evaluate.pipeline.sample_grid``; both are logged by the runs that make them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

Row = tuple[str, float, float]   # (method label, GFLOPs, metric value): lower is better for both

import pandas as pd

from harness.core import stats
from harness.core.figures import pyplot, save_png
from harness.core.stats import ci95
from harness.tables.compare import latest_per_seed, metric_columns, metric_protocol


def _plt():
    return pyplot()


def _save(fig, path: Path, dpi: Optional[int] = None) -> Path:
    return save_png(fig, path, dpi=dpi)


def aggregate(df: pd.DataFrame, x: str, y: str, group: Optional[str] = None) -> pd.DataFrame:
    """Mean and 95 % CI half-width of ``y`` per (``group``, ``x``), one run per seed."""
    rows = []
    keys = [k for k in (group, x) if k]
    for values, g in df.dropna(subset=[y]).groupby(keys, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        g = latest_per_seed(g)
        mean, half = ci95(g[y].tolist())
        rows.append({**dict(zip(keys, values)), "mean": mean, "ci": half or 0.0, "n": len(g)})
    return pd.DataFrame(rows)


def line_plot(points: pd.DataFrame, x: str, path: Path, *, group: Optional[str] = None, title: str = "",
              xlabel: str = "", ylabel: str = "", categorical_x: bool = False) -> Path:
    """Lines of ``mean`` vs ``x`` with 95 % CI error bars, one line per ``group`` (output of :func:`aggregate`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    groups = points.groupby(group, sort=True) if group else [(None, points)]
    labels = sorted(points[x].astype(str).unique()) if categorical_x else None
    for name, g in groups:
        g = g.sort_values(x)
        xs = [labels.index(str(v)) for v in g[x]] if categorical_x else g[x].astype(float)
        ax.errorbar(xs, g["mean"], yerr=g["ci"], marker="o", capsize=3, label=None if name is None else str(name))
    if categorical_x:
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if group:
        ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_front(points: pd.DataFrame, x: str, y: str = "mean") -> pd.DataFrame:
    """Points not dominated in (lower ``x``, lower ``y``), sorted by ``x`` (:func:`harness.core.stats.pareto_front`)."""
    xs, ys = points[x].astype(float).tolist(), points[y].astype(float).tolist()
    return points.iloc[stats.pareto_front(list(zip(xs, ys)))]


def pareto_plot(points: pd.DataFrame, x: str, label: str, path: Path, *, title: str = "", xlabel: str = "",
                ylabel: str = "") -> Path:
    """Scatter of ``mean`` vs ``x`` (one label per point) with the Pareto front drawn as a step line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.errorbar(points[x].astype(float), points["mean"], yerr=points["ci"], fmt="o", capsize=3)
    for _, p in points.iterrows():
        ax.annotate(str(p[label]), (float(p[x]), p["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points.assign(**{x: points[x].astype(float)}), x)
    if len(front) > 1:
        ax.step(front[x], front["mean"], where="post", color="C3", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def scatter_pareto(rows: Sequence[Row], path: Path | str, *, metric_label: str, gflops_label: str = "GFLOPs per image",
                title: str = "") -> Path:
    """Scatter every row (one colour per method label) and draw the Pareto front; writes a PNG."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    labels = list(dict.fromkeys(r[0] for r in rows))
    for i, label in enumerate(labels):
        pts = [(g, m) for lab, g, m in rows if lab == label]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, color=f"C{i % 10}", s=30)
    front = [rows[i] for i in stats.pareto_front([(float(g), float(m)) for _, g, m in rows])]
    ax.plot([r[1] for r in front], [r[2] for r in front], color="black", lw=1, ls="--", label="Pareto front")
    ax.set_xlabel(gflops_label)
    ax.set_ylabel(f"{metric_label} (lower is better)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi=120)


def quality_metric(runs: pd.DataFrame) -> Optional[str]:
    """The FID-like metric column the runs carry (FID on Inception-V3 preferred, then FD stand-ins)."""
    cols = [c for c in metric_columns(runs, "fid") if runs[c].notna().any()]
    return cols[0] if cols else None


def _n_of(runs: pd.DataFrame) -> pd.Series:
    """Time intervals (N) of each run: the tag every run records (``harness.time_experts``), else ``method.n``."""
    n = runs.get("tags.harness.time_experts", pd.Series(None, index=runs.index, dtype=object))
    fallback = runs.get("params.method.n", pd.Series(None, index=runs.index, dtype=object))
    return n.where(n.notna(), fallback).astype(float)


def standard_plots(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Every standard figure the runs have data for, written under ``out_dir``."""
    out_dir = Path(out_dir)
    y = quality_metric(runs) if not runs.empty else None
    if y is None or "params.method.name" not in runs:
        return []
    name = y[len("metrics."):]
    ylabel = metric_protocol(name)
    made = []
    with_n = runs.assign(_n=_n_of(runs)).dropna(subset=["_n"])
    if with_n["_n"].nunique() > 1:
        pts = aggregate(with_n, "_n", y, group="params.method.name")
        made.append(line_plot(pts, "_n", out_dir / "quality_vs_n.png", group="params.method.name", xlabel="N (experts)",
                              ylabel=ylabel, title="quality vs N (seed 000 Tab. 4)"))
    if "params.method.boundaries" in runs:
        b = runs.dropna(subset=["params.method.boundaries"])
        b = b[b["params.method.boundaries"].astype(str).str.lower().isin(["none", "null"]) == False]  # noqa: E712
        if b["params.method.boundaries"].nunique() > 1:
            b = b.assign(_b=b["params.method.boundaries"].map(lambda s: ", ".join(f"{v:.3g}" for v in json.loads(s))))
            pts = aggregate(b, "_b", y)
            made.append(line_plot(pts, "_b", out_dir / "quality_vs_boundaries.png", categorical_x=True,
                                  xlabel="boundaries", ylabel=ylabel, title="boundary perturbation (seed 000 Tab. 5)"))
    cost = next((c for c in metric_columns(runs, "gflops") if runs[c].notna().any()), None)
    if cost is not None:
        g = runs.dropna(subset=[cost, y])
        pts = aggregate(g.assign(_label=g["run_name"]), cost, y, group="_label")
        made.append(pareto_plot(pts, cost, "_label", out_dir / "quality_vs_gflops.png",
                                xlabel=metric_protocol(cost[len("metrics."):]), ylabel=ylabel,
                                title="quality vs cost (seed 004 Tab. 2)"))
    return made


def list_png_artifacts(uri: str, run_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(run id, artifact path) of every PNG the runs logged (sample grids, monitor curves, sweep plots)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = []

    def walk(run_id: str, path: Optional[str]) -> None:
        for a in client.list_artifacts(run_id, path):
            if a.is_dir:
                walk(run_id, a.path)
            elif a.path.lower().endswith(".png"):
                found.append((run_id, a.path))

    for rid in run_ids:
        walk(rid, None)
    return found
