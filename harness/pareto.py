"""Quality vs compute: the Pareto front of (method, GFLOPs, metric) rows and its plot (seed 004 Fig. 1, Tab. 2).

Seed 004 compares guidance methods by FID against GFLOPs; here a row is any (label, gflops,
metric) with *lower is better* for both, and the metric's name travels with the plot's axis
label, so an FD on small-CNN features is never shown as FID.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

Row = tuple[str, float, float]   # (method label, GFLOPs, metric value)


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """Rows no other row beats in both GFLOPs and metric (ties kept), sorted by GFLOPs."""
    front = []
    for label, g, m in rows:
        dominated = any((g2 <= g and m2 <= m) and (g2 < g or m2 < m) for _, g2, m2 in rows)
        if not dominated:
            front.append((label, float(g), float(m)))
    return sorted(front, key=lambda r: (r[1], r[2]))


def plot_pareto(rows: Sequence[Row], path: Path | str, *, metric_label: str, gflops_label: str = "GFLOPs per image",
                title: str = "") -> Path:
    """Scatter every row (one colour per method label) and draw the Pareto front; writes a PNG."""
    from harness.figures import pyplot, save_png

    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    labels = list(dict.fromkeys(r[0] for r in rows))
    for i, label in enumerate(labels):
        pts = [(g, m) for lab, g, m in rows if lab == label]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, color=f"C{i % 10}", s=30)
    front = pareto_front(rows)
    ax.plot([r[1] for r in front], [r[2] for r in front], color="black", lw=1, ls="--", label="Pareto front")
    ax.set_xlabel(gflops_label)
    ax.set_ylabel(f"{metric_label} (lower is better)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, path, dpi=120)
