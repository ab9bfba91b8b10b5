"""Time intervals of a partition of [0, 1]: the checks every time-partitioned piece shares (seed 000, Sec. 3).

Experts (``Piecewise``), jointly trained experts (``time_experts``), per-batch time samplers and
sweep derivers all describe a split by its N - 1 interior boundaries; they validate and expand
them here, so a bad boundary list is the same one-line error wherever it comes from.
"""
from __future__ import annotations

from typing import Optional, Sequence

from harness.core.errors import ConfigError


def check_boundaries(boundaries: Sequence[float], n_fields: Optional[int] = None, key: str = "boundaries") -> list[float]:
    """Interior boundaries must be strictly increasing inside (0, 1), N - 1 of them for N experts."""
    b = [float(v) for v in boundaries]
    if any(not (0.0 < v < 1.0) for v in b):
        raise ConfigError(f"{key}: every boundary must lie in (0, 1), got {b}")
    if any(b2 <= b1 for b1, b2 in zip(b, b[1:])):
        raise ConfigError(f"{key}: boundaries must be strictly increasing, got {b}")
    if n_fields is not None and len(b) != n_fields - 1:
        raise ConfigError(f"{key}: {n_fields} experts need {n_fields - 1} interior boundaries, got {len(b)}")
    return b


def intervals_from_boundaries(boundaries: Sequence[float]) -> list[tuple[float, float]]:
    """[(0, b1), (b1, b2), ..., (b_{N-1}, 1)]: expert i owns [b_i, b_{i+1}) (the last one includes 1)."""
    edges = [0.0, *[float(b) for b in boundaries], 1.0]
    return list(zip(edges[:-1], edges[1:]))


def uniform_boundaries(n: int) -> list[float]:
    """The naive split's N - 1 equally spaced boundaries (seed 000's baseline)."""
    return [i / n for i in range(1, n)]
