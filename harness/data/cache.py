"""Datasets by content hash of their node, so the units of one process that share data load it once."""
from __future__ import annotations

from typing import Any, Mapping

from harness.core.hashing import content_hash
from harness.data.base import ArrayDataset, build_dataset


class DatasetCache:
    """Datasets by content hash of their node, so units sharing data load it once."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def get(self, node: Mapping[str, Any]) -> ArrayDataset:
        key = content_hash(dict(node))
        if key not in self._items:
            self._items[key] = build_dataset(dict(node))
        return self._items[key]
