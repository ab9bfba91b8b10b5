"""Fixtures shared by several test files (one definition each)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Units, caches and the default SQLite store of every config composed in the test live under tmp_path."""
    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path / "w"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "w"
