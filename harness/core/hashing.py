"""Content hashes and derived seeds: identity by what a thing is, never by a counter (STYLE practice 9).

One canonical JSON (sorted keys, no spaces, ``str`` for anything JSON cannot hold) is hashed
for every content-addressed name in the harness: units, cells, experiments, splits, clusters,
feature caches.  Derived seeds turn a tuple such as (seed, step) into an integer seed, so a
random stream depends on nothing but its coordinates (resume, DDP, paired draws).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """The one serialisation every content hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. ``("harness", seed, step)``).

    The parts are joined with ``:`` and hashed, so nearby coordinates give unrelated streams.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
