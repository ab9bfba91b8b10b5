"""Load a validated config whose workdir and caches live under a test's tmp_path."""
from __future__ import annotations

import os
from pathlib import Path

from harness.config import load


def load_in(tmp_path: Path, *overrides: str) -> dict:
    """``load(overrides)`` with HARNESS_WORKDIR=tmp_path and HARNESS_CACHE=tmp_path/cache while it resolves."""
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    os.environ["HARNESS_CACHE"] = str(tmp_path / "cache")
    try:
        return load(list(overrides))
    finally:
        os.environ.pop("HARNESS_WORKDIR")
        os.environ.pop("HARNESS_CACHE")
