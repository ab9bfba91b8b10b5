"""Git provenance of a result: commit, dirty flag and the diff (STYLE practice 8)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_info() -> dict[str, str]:
    """{'git.commit': sha or 'unknown', 'git.dirty': 'true'|'false'|'unknown'}."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit.strip() if commit else "unknown",
            "git.dirty": "unknown" if status is None else str(bool(status.strip())).lower()}


def git_diff() -> str:
    """The uncommitted diff against HEAD ('' when clean or not a repository)."""
    return _git("diff", "HEAD") or ""
