"""Boundaries that give every interval an equal share of the monitor (de Boor; seed 000, Sec. 3.3).

"The i-th split t_i is chosen as the grid point where the cumulative sum most closely
approximates i/N sum_j m(t_j)" (seed 000, after Eq. 14).  With ``interpolate=True`` the
cumulative curve is linearly interpolated between grid points instead, so boundaries are not
quantised to the grid.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.core.errors import ConfigError


def boundaries_from_monitor(grid: Sequence[float], curve: Sequence[float], n: int, *,
                            interpolate: bool = False) -> list[float]:
    """N - 1 interior boundaries from a monitor sampled on ``grid`` (cell right edges, increasing).

    ``curve[j]`` is the monitor mass of the cell ending at ``grid[j]``; the cumulative sum at
    ``grid[j]`` is the burden accumulated on [0, grid[j]].
    """
    g = np.asarray(grid, dtype=np.float64)
    m = np.asarray(curve, dtype=np.float64)
    if n < 1:
        raise ConfigError(f"split.n must be >= 1, got {n}")
    if g.shape != m.shape or g.ndim != 1 or len(g) < 2:
        raise ConfigError(f"monitor grid and curve must be 1-D of equal length >= 2, got {g.shape} and {m.shape}")
    if np.any(np.diff(g) <= 0):
        raise ConfigError("monitor grid must be strictly increasing")
    if np.any(m < 0) or not np.isfinite(m).all() or m.sum() <= 0:
        raise ConfigError("monitor values must be finite, >= 0 and not all zero")
    cum = np.cumsum(m)
    targets = cum[-1] * np.arange(1, n) / n
    if interpolate:
        xs = np.concatenate([[0.0], g])
        ys = np.concatenate([[0.0], cum])
        out = np.interp(targets, ys, xs)
    else:
        out = g[np.abs(cum[None, :] - targets[:, None]).argmin(1)]
    b = [float(v) for v in out]
    if any(b2 <= b1 for b1, b2 in zip(b, b[1:])) or (b and (b[0] <= 0 or b[-1] >= 1)):
        raise ConfigError(f"split.n={n} is too fine for a {len(g)}-point grid: boundaries {b} collide",
                          hint="raise split.grid or use split.interpolate=true")
    return b
