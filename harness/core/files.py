"""File checksums and atomic writes: a killed process never leaves half a record (STYLE practice 6).

``write_atomic`` writes through a temp file in the same directory, fsyncs and renames, so a
reader sees the old file or the new one, never a mix; ``write_json_atomic`` is its JSON form.
``sha256_file`` is the one file checksum (checkpoints, dataset files, weights files); datasets
and weights ask for a memo keyed by (path, size, mtime) so an 87 MB Inception file is hashed once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

_MEMO: dict[tuple[str, int, int], str] = {}


def _digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, *, memo: bool = False, cache_file: Optional[Path] = None) -> str:
    """SHA-256 of a file's bytes.

    ``memo``: remember the digest in this process by (path, size, mtime). ``cache_file``: also keep
    it in that JSON file across processes (large weights files). Without either, every call reads
    the file, which is what a checksum verification needs.
    """
    p = Path(path).resolve()
    if not (memo or cache_file):
        return _digest(p)
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    known: dict[str, str] = {}
    disk_key = f"{key[0]}:{key[1]}:{key[2]}"
    if cache_file is not None and Path(cache_file).exists():
        try:
            known = json.loads(Path(cache_file).read_text())
        except (OSError, json.JSONDecodeError):
            known = {}
    digest = known.get(disk_key) or _digest(p)
    _MEMO[key] = digest
    if cache_file is not None and disk_key not in known:
        write_json_atomic(Path(cache_file), {**known, disk_key: digest}, indent=None)
    return digest


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync, rename over ``path``; the temp file goes on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any, *, indent: Optional[int] = 1) -> None:
    """JSON of ``obj`` written with :func:`write_atomic` (``str`` for values JSON cannot hold)."""
    text = json.dumps(obj, indent=indent, default=str)
    write_atomic(Path(path), lambda f: f.write(text.encode()))
