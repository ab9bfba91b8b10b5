"""Live progress (issue 19 item 1): what `harness sweep` and `harness run` show while cells and units train.

The sweep's view reads only the records on disk (cell locks, result/failure records, the units'
progress.json), so these tests write those records the way the tasks do and check what is printed.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from harness.cli import main
from harness.core.files import write_json_atomic
from harness.launch.base import Stage, Task
from harness.sweep import state
from harness.sweep.load import load_sweep
from harness.sweep.progress import SweepProgress
from tests.test_sweep import base_yaml, write_sweep


class Clock:
    """Time that moves 2 s per reading, so every poll reads the disk."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        self.t += 2.0
        return self.t


def _sweep(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path / "p.yaml", base_yaml() + "grid: {train.seed: [0, 1]}\n"))
    state.write_sweep_record(sweep.dir, {"name": "p", "file": "p.yaml", "cells": [c.to_dict() for c in sweep.cells]})
    a, b = sweep.cells
    stages = [Stage("units", [Task("units", str(sweep.dir), a.id, roles=["model"]),
                              Task("units", str(sweep.dir), b.id, roles=["model"])]),
              Stage("evaluate", [Task("evaluate", str(sweep.dir), a.id), Task("evaluate", str(sweep.dir), b.id)])]
    return sweep, stages, a, b


def _progress(unit_dir: Path, step: int, total: int, loss, t: float, done: bool = False) -> None:
    write_json_atomic(unit_dir / "progress.json", {"hash": unit_dir.name, "label": "model [0.000, 1.000)", "total": total,
                                                   "start_step": 0, "started": t - 10, "step": step, "loss": loss, "time": t})
    if done:
        write_json_atomic(unit_dir / "done.json", {"finished": True})


def test_off_a_terminal_each_cell_event_is_one_line_in_order(workdir, tmp_path):
    sweep, stages, a, b = _sweep(tmp_path)
    clock, lines = Clock(), []
    unit = workdir / "units" / "u0"
    view = SweepProgress(sweep, stages, cell_units={a.id: {"model": "u0"}}, live=False, echo=lines.append, clock=clock)
    with view:
        view.watch("units", 0, 2)
        with state.locked(state.task_lock(sweep.dir, a.id, "units", ["model"])):
            _progress(unit, 10, 40, 0.5, clock.t)
            view.watch("units", 0, 2)
            _progress(unit, 20, 40, 0.25, clock.t)
            view.watch("units", 0, 2)
            view.watch("units", 0, 2)          # nothing new: no line
            _progress(unit, 40, 40, 0.125, clock.t, done=True)
            view.watch("units", 1, 2)
        state.record_failure(sweep.dir, b.id, "units", RuntimeError("out of\nmemory"))
        view.watch("units", 2, 2)
        state.record_result(sweep.dir, a.id, {"metrics": {"fd_raw_100": 1.2345678, "gflops_per_image": 3.0}})
        view.watch("evaluate", 1, 2)
    text = [re.sub(r"^\[\d+:\d\d\] ", "", ln) for ln in lines]
    assert all(re.match(r"^\[\d+:\d\d\] ", ln) for ln in lines)     # every line says when
    expected = [
        "stage units: started (2 task(s))",
        f"cell {a.id} train.seed=0: started (units model step 10/40 loss 0.5)",
        "unit model [0.000, 1.000) (u0): step 10/40 loss 0.5 (25 %",
        "unit model [0.000, 1.000) (u0): step 20/40 loss 0.25 (50 %",
        "unit model [0.000, 1.000) (u0): trained, 40 steps, loss 0.125",
        f"cell {b.id} train.seed=1: failed: RuntimeError: out of memory (1/2 done",
        "stage units: done (2 task(s))",
        "stage evaluate: started (2 task(s))",
        f"cell {a.id} train.seed=0: finished, fd_raw_100 = 1.235",
    ]
    assert len(text) == len(expected), "\n".join(lines)
    for got, want in zip(text, expected):
        assert got.startswith(want), (got, want)
    assert "left)" in text[2] and text[-1].endswith("1.235")   # the last cell: nothing left to estimate


def test_on_a_terminal_the_live_view_shows_cells_units_and_fits_80_columns(workdir, tmp_path):
    from rich.console import Console

    sweep, stages, a, b = _sweep(tmp_path)
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    view = SweepProgress(sweep, stages, cell_units={a.id: {"model": "u0"}}, console=console, echo=lambda s: None,
                         clock=clock)
    with view:
        assert view._live is not None   # a terminal: the live view, not event lines
        with state.locked(state.task_lock(sweep.dir, a.id, "units", ["model"])):
            _progress(workdir / "units" / "u0", 30, 40, 0.75, clock.t)
            view.watch("units", 0, 2)
            frame = console.export_text() if console.record else out.getvalue()
        state.record_result(sweep.dir, a.id, {"metrics": {"fd_raw_100": 2.5}})
        view.watch("units", 2, 2)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "step 30/40 loss 0.75" in frame and "remaining ~" in frame and "elapsed" in frame
    assert "model [0.000, 1.000)" in frame                       # the training-unit table
    last = screen[screen.rindex("sweep p:"):]
    assert "1/2 cells finished" in last and "2.5" in last and "running" in last
    assert all(len(ln) <= 80 for ln in screen.splitlines())


def test_multi_unit_run_says_which_unit_of_how_many_and_writes_progress(workdir, capsys):
    args = ["train", "experiment=gmm_mini", "method=naive_split", "method.n=2", "train.steps=8", "train.log_every=2",
            "train.checkpoint_every=8", "train.batch_size=16", "backbone.width=16", "backbone.depth=1", "--no-track"]
    assert main(args) == 0
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("unit ")]
    assert out[0].startswith("unit 1/2 expert0") and out[0].endswith("training, 8 steps")
    u1 = [ln for ln in out if ln.startswith("unit 1/2")]
    u2 = [ln for ln in out if ln.startswith("unit 2/2")]
    assert out == u1 + u2                                           # unit 1's lines, then unit 2's
    steps = [int(re.search(r"step (\d+)/8", ln).group(1)) for ln in u1[1:]]
    assert steps == [2, 4, 6, 8] and all("loss" in ln for ln in u1[1:])   # 25/50/75/100 %, each once
    recs = [json.loads(p.read_text()) for p in (workdir / "units").glob("*/progress.json")]
    assert len(recs) == 2 and all(r["step"] == r["total"] == 8 and r["loss"] is not None for r in recs)
    assert main(args) == 0                                          # again: both reused, one line each
    again = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("unit ")]
    assert [ln.split(":")[0] for ln in again] == ["unit 1/2 expert0 [0.000, 0.500)", "unit 2/2 expert1 [0.500, 1.000)"]
    assert all("reused" in ln for ln in again)
