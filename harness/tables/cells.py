"""A resumable record of experiment cells for the mini reproductions (their statistics: :mod:`harness.core.stats`).

The ``scripts/reproduce_*_mini.py`` scripts run a grid of ordinary ``harness run`` cells (method x seed)
on a shared CPU where a run can be killed at any time.  ``CellLog`` keeps every finished cell in one JSON
file, written atomically after each cell, so a re-run skips what is done and a kill loses at most the
cell in flight (units inside it are content-hashed and resume on their own).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.core.files import write_json_atomic



def metric_key(metrics: Mapping[str, Any], prefix: str) -> str:
    """The logged name of a metric family, e.g. ``fd_cnn_fashion_mnist_1k`` for ``fd_cnn_fashion_mnist``.

    Sample counts are part of the name (``_1k``, ``_256``), so two counts never mix in one column.
    """
    keys = sorted(k for k in metrics
                  if k == prefix or (k.startswith(prefix + "_") and k[len(prefix) + 1:][:1].isdigit()))
    if not keys:
        raise KeyError(f"no metric named {prefix}* among {sorted(metrics)}")
    return keys[0]


def reading_section(reading: str | None) -> list[str]:
    """The report's closing "Reading" lines; ``reading`` is the text itself or the path of a file holding it."""
    if reading and Path(reading).exists():
        reading = Path(reading).read_text()
    return ["", "## Reading", "", reading or "_(to be written after looking at the numbers)_", ""]


class CellLog:
    """Finished cells of a reproduction, one dict each, persisted to ``path`` after every ``add``."""

    def __init__(self, path: Path | str, key: Iterable[str] = ("method", "seed")) -> None:
        self.path = Path(path)
        self.key = tuple(key)
        if self.path.exists():
            try:
                self.rows: list[dict[str, Any]] = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise SystemExit(f"{self.path} is not valid JSON ({err}); move it aside to start the cells afresh, "
                                 "or restore it from git") from err
        else:
            self.rows = []

    def _key(self, row: Mapping[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key)

    def done(self, **key: Any) -> bool:
        want = tuple(key[k] for k in self.key)
        return any(self._key(r) == want for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if self._key(r) != self._key(row)] + [row]
        write_json_atomic(self.path, self.rows)

    def check_same_protocol(self, key: str = "weights_sha256") -> str:
        """The one value of ``protocol[key]`` across all cells; SystemExit naming the cells when they differ.

        A metric is comparable across cells only under one extractor: FDs from two differently trained
        classifiers must not share a table, so this fails instead of averaging them.
        """
        groups: dict[str, list[str]] = {}
        for r in self.rows:
            groups.setdefault(str(r["protocol"].get(key)), []).append(f"{r['method']}/seed {r['seed']}")
        if len(groups) > 1:
            detail = "; ".join(f"{v[:12]}: {', '.join(cells)}" for v, cells in groups.items())
            raise SystemExit(f"{self.path}: cells were scored with different protocol.{key} ({detail}); delete the "
                             "odd cells from the JSON and re-run them so every cell uses one extractor")
        return next(iter(groups))

    def values(self, metric: str, where: Mapping[str, Any]) -> dict[int, float]:
        """``{seed: metric}`` for the rows matching ``where`` (one row per seed)."""
        return {r["seed"]: r["metrics"][metric] for r in self.rows
                if all(r.get(k) == v for k, v in where.items()) and metric in r["metrics"]}
