"""The machine's process table from Linux's /proc, for stopping a command's children cleanly.

One parser of ``/proc/<pid>/stat`` ("pid (comm) state ppid pgrp ..."; comm may hold spaces and
parentheses, so fields are read after the last ")").  Where there is no /proc the table is empty.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    state: str   # R, S, D, Z (zombie), ...
    ppid: int
    pgrp: int


def processes() -> list[Proc]:
    """Every process now listed in /proc (one that exits while it is read is left out)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append(Proc(int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return out


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...); empty where there is none."""
    children: dict[int, list[int]] = {}
    for p in processes():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out
