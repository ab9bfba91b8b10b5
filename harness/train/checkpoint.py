"""Atomic, checksummed checkpoints that hold tensors and JSON only (STYLE practice 6).

A save writes ``ckpt_<step>.pt`` through a temp file + fsync + rename, then its
``ckpt_<step>.json`` sidecar (step, SHA-256, size, format and config version) the same
way; a checkpoint counts only once its sidecar exists and its bytes match the checksum.
So a killed or failed save (full disk) never replaces a good checkpoint, and
:func:`load_latest` falls back past a corrupt one.  Files load with
``torch.load(weights_only=True)``: no pickled code, no argparse namespaces.
"""
from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from harness.core.errors import CheckpointError
from harness.core.files import fsync_dir, sha256_file, write_atomic

FORMAT_VERSION = 1


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc`` (torch.save wraps a failed write in a RuntimeError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def save_checkpoint(directory: Path, step: int, payload: dict[str, Any], *, config: dict[str, Any],
                    config_version: int, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; prune to the newest ``keep``. Returns the .pt path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt_{step:09d}.pt"
    meta_path = path.with_suffix(".json")
    body = dict(payload, step=int(step), config_json=json.dumps(config, sort_keys=True))
    try:
        write_atomic(path, lambda f: torch.save(body, f))
        meta = {"step": int(step), "sha256": sha256_file(path), "size": path.stat().st_size,
                "format_version": FORMAT_VERSION, "config_version": config_version}
        write_atomic(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        fsync_dir(directory)
    except (OSError, RuntimeError) as exc:
        err = _os_error(exc)
        if err is None:
            raise
        if meta_path.exists() is False:
            path.unlink(missing_ok=True)
        prev = latest_valid_path(directory)
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}",
            hint=f"the previous checkpoint {prev or '(none)'} is intact; free space on {directory} and re-run the same command to resume",
        ) from None
    for old in sorted(directory.glob("ckpt_*.json"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt").unlink(missing_ok=True)
    return path


def verify(path: Path) -> dict[str, Any]:
    """Check a checkpoint against its sidecar; return the sidecar or raise CheckpointError."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not meta_path.exists():
        raise CheckpointError(f"checkpoint {path} has no checksum sidecar {meta_path.name}", hint="it was never completely written; delete it")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise CheckpointError(f"checkpoint sidecar {meta_path} is unreadable: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}",
                              hint="use the harness version that wrote it, or retrain the unit")
    if path.stat().st_size != meta["size"]:
        raise CheckpointError(f"checkpoint {path} is truncated ({path.stat().st_size} of {meta['size']} bytes)",
                              hint="delete it; training resumes from the previous checkpoint")
    if sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 mismatch)", hint="delete it; training resumes from the previous checkpoint")
    return meta


def load_checkpoint(path: Path, *, config_version: Optional[int] = None, map_location: str = "cpu") -> dict[str, Any]:
    """Verify and load one checkpoint with ``weights_only=True``."""
    meta = verify(path)
    if config_version is not None and meta.get("config_version") != config_version:
        raise CheckpointError(
            f"checkpoint {path} was written with config version {meta.get('config_version')}, this code uses {config_version}",
            hint="the meaning of its config changed; retrain the unit or use the matching harness version")
    try:
        body = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {str(err).splitlines()[0]}") from None
    body["config"] = json.loads(body.pop("config_json"))
    return body


def candidates(directory: Path) -> list[Path]:
    """Checkpoint files with a sidecar, newest first."""
    return [p.with_suffix(".pt") for p in sorted(Path(directory).glob("ckpt_*.json"), reverse=True)]


def latest_valid_path(directory: Path) -> Optional[Path]:
    for path in candidates(directory):
        try:
            verify(path)
            return path
        except CheckpointError:
            continue
    return None


def load_latest(directory: Path, *, config_version: Optional[int] = None, map_location: str = "cpu") -> Optional[dict[str, Any]]:
    """The newest checkpoint that passes its checksum; corrupt ones are skipped with a warning."""
    if not Path(directory).exists():
        return None
    for path in candidates(directory):
        try:
            return load_checkpoint(path, config_version=config_version, map_location=map_location)
        except CheckpointError as err:
            if "config version" in err.message or "format version" in err.message:
                raise
            warnings.warn(f"skipping {err.one_line()}", RuntimeWarning, stacklevel=2)
    return None
