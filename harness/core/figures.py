"""Headless matplotlib for every PNG the harness writes (monitor curves, sweeps, router accuracy, Pareto fronts).

One place selects the Agg backend (runs happen on compute nodes without a display) and saves a figure:
parent folders created, layout tightened, the figure closed so long sweeps do not accumulate them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported lazily: most commands draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path | str, dpi: Optional[int] = None) -> Path:
    """Write ``fig`` to ``path`` (folders created, tight layout) and close it; returns the path.

    No "Software" (matplotlib version) entry is written, so a PNG depends on its data only and a
    re-rendered report is byte-identical on another machine.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None}, **({"dpi": dpi} if dpi else {}))
    pyplot().close(fig)
    return path
