"""Where a running sweep is, read from what its tasks write on disk: a live view on a terminal, event lines elsewhere.

The launcher's loop calls :meth:`SweepProgress.watch` between polls (``Launcher.run(..., watch=...)``);
everything else comes from the records the cells and units already keep, whichever process (submitit
subprocess, SLURM job) writes them: a cell's state and running stage from ``harness.sweep.state``
(result / failure records, task locks), its metric from ``result.json``, and a unit's step and loss from
the ``progress.json`` the training loop writes (``harness.train.loop.ProgressFile``).  No IPC.

On a terminal (rich ``Live``): one line per stage (tasks done of total), one row per cell (state, the
unit being trained with its step and loss, the metric once finished), the units in training, elapsed
time and an estimate of what remains.  Off a terminal (CI, SLURM logs, ``--detach``'s driver log): one
plain line per event, in the order seen: stage started/done, cell started/finished/failed, and per unit
only 25/50/75 % and done.  The estimate is the pace so far: elapsed time per cell finished in this run
times the cells left, or, before any cell finished, the slowest training unit's steps left at its rate.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from harness.sweep import state
from harness.sweep.summary import delta_text, pick_metric

UNIT_MARKS = (25, 50, 75)          # percent of a unit's steps that get a line off a terminal
REFRESH_S = 1.0                    # disk is read at most this often


def clock_text(seconds: Optional[float]) -> str:
    """'1:02:03', '2:03', or '?' for an unknown duration."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def read_progress(unit_dir: Path) -> Optional[dict[str, Any]]:
    """A unit's progress record plus ``done`` (its done.json exists); None when it never started training here."""
    try:
        rec = json.loads((unit_dir / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    rec["done"] = (unit_dir / "done.json").exists()
    return rec


def unit_eta(rec: Mapping[str, Any]) -> Optional[float]:
    """Seconds left for a unit at the rate of this process's steps so far; None before a step is timed."""
    steps = rec["step"] - rec.get("start_step", 0)
    spent = rec["time"] - rec["started"]
    if rec.get("done") or rec["step"] >= rec["total"]:
        return 0.0
    if steps <= 0 or spent <= 0:
        return None
    return (rec["total"] - rec["step"]) * spent / steps


class LiveView:
    """A progress view as a context manager: a rich ``Live`` of :meth:`render` on a terminal (``live_on``
    None = exactly when the console is one), event lines elsewhere; :meth:`poll` reads and reports (subclasses
    set ``console``, ``live_on`` and ``_live = None`` and implement ``poll(force)`` and ``render()``)."""

    console: Any
    live_on: Optional[bool]
    _live: Any

    def __enter__(self) -> "LiveView":
        if self.console is None:
            from rich.console import Console

            self.console = Console()
        if self.live_on is None:
            self.live_on = self.console.is_terminal
        if self.live_on:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self.poll(force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.poll(force=True)
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None


class SweepProgress(LiveView):
    """The progress of one ``harness sweep`` run; use as a context manager around ``launcher.run``.

    ``cell_units``: {cell id: {role: unit hash}} for cells whose units are known before they run (not those
    a prepare stage decides), so a cell's row can show the unit its task trains.  ``live``: None = a rich
    live view exactly when the console is a terminal.  ``units``: False when tasks run in this process and
    print their own unit progress (``--launcher debug``).
    """

    def __init__(self, sweep, stages: Sequence[Any], *, cell_units: Optional[Mapping[str, Mapping[str, str]]] = None,
                 live: Optional[bool] = None, echo: Callable[[str], Any] = print, console=None, units: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.sweep = sweep
        self.clock = clock
        self.t0 = clock()
        self.echo = echo
        self.units_on = units
        self.planned = [c for c in sweep.cells if any(t.cell_id == c.id for st in stages for t in st.tasks)]
        self.stage_order = [st.name for st in stages]
        self.stages: dict[str, tuple[int, int]] = {st.name: (0, len(st.tasks)) for st in stages}
        self.cell_units = {k: dict(v) for k, v in (cell_units or {}).items()}
        self.units_dir = Path(sweep.base_cfg["paths"]["workdir"]) / "units"
        self.console = console
        self.live_on = live
        self._live = None
        self._last_read = float("-inf")
        self.snapshot: dict[str, dict[str, Any]] = {}
        self.unit_recs: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, str] = {c.id: state.cell_state(sweep.dir, c.id) for c in sweep.cells}
        self._started: set[str] = set()
        self._marks: dict[str, set[int]] = {}
        self._stage_said: dict[str, str] = {}
        self._reported: set[str] = set()
        self.finished_now: list[str] = []   # cells that finished or failed during this run, in order


    # ---- what the launcher calls -------------------------------------------------------------------------
    def watch(self, stage: str, done: int, total: int) -> None:
        """Launcher callback: ``done`` of ``total`` tasks of ``stage`` have ended; then read the disk (throttled)."""
        self.stages[stage] = (done, total)
        self._reported.add(stage)
        if stage not in self.stage_order:
            self.stage_order.append(stage)
        self.poll()

    def poll(self, force: bool = False) -> None:
        """Read the records (at most every ``REFRESH_S``), print what changed, refresh the live view."""
        now = self.clock()
        if not force and now - self._last_read < REFRESH_S:
            return
        self._last_read = now
        self._stage_events(ends=False)
        self._read_units()
        for cell in self.sweep.cells:
            self.snapshot[cell.id] = self._cell(cell)
        self._cell_events(ended=False)        # in the order they happen: cells start, units train, cells end
        for unit, rec in self.unit_recs.items():
            self._unit_events(unit, rec)
        self._cell_events(ended=True)
        self._stage_events(ends=True)
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    # ---- reading ------------------------------------------------------------------------------------------
    def _read_units(self) -> None:
        wanted = {h for roles in self.cell_units.values() for h in roles.values()}
        if not self.units_dir.is_dir():
            return
        for d in self.units_dir.iterdir():
            rec = read_progress(d)
            # units of this sweep's cells, and any unit that trained since the sweep started (a prepare stage's)
            if rec is None or (d.name not in wanted and rec["time"] < self.t0):
                continue
            if rec["time"] < self.t0 and rec["done"]:
                continue   # trained before this run: reused, not progress
            self.unit_recs[d.name] = rec

    def _cell(self, cell) -> dict[str, Any]:
        st = state.cell_state(self.sweep.dir, cell.id)
        out: dict[str, Any] = {"state": st, "delta": delta_text(cell.delta), "detail": "", "value": None, "metric": None}
        if st == "finished":
            metrics = (state.result(self.sweep.dir, cell.id) or {}).get("metrics", {})
            out["metric"] = pick_metric(self.sweep.spec.metric, metrics)
            out["value"] = metrics.get(out["metric"]) if out["metric"] else None
        elif st == "failed":
            out["detail"] = (state.failure(self.sweep.dir, cell.id) or {}).get("error", "")
        elif st == "running":
            out["detail"] = "; ".join(self._task_text(cell.id, stage, roles)
                                      for stage, roles in state.running_tasks(self.sweep.dir, cell.id))
        return out

    def _task_text(self, cell_id: str, stage: str, roles: str) -> str:
        unit = self.cell_units.get(cell_id, {}).get(roles)
        rec = self.unit_recs.get(unit) if unit else None
        if rec is None:
            return stage if roles in ("", "all") else f"{stage} {roles}"
        return f"{stage} {roles} {self._unit_text(rec)}"

    @staticmethod
    def _unit_text(rec: Mapping[str, Any]) -> str:
        loss = "" if rec.get("loss") is None else f" loss {rec['loss']:.4g}"
        return f"step {rec['step']}/{rec['total']}{loss}"

    # ---- events (off a terminal) ---------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self._live is None:
            self.echo(f"[{clock_text(self.clock() - self.t0)}] {text}")

    def _stage_events(self, ends: bool) -> None:
        """Stages in order: one started once the launcher reports on it and the stages before it are done.

        ``ends``: also say a stage is done (after its cells' events of this poll)."""
        for name in self.stage_order:
            if name not in self._reported:
                return
            done, total = self.stages[name]
            if name not in self._stage_said:
                self._stage_said[name] = "started"
                self._say(f"stage {name}: started ({total} task(s))")
            if done < total or (not ends and self._stage_said[name] != "done"):
                return
            if self._stage_said[name] != "done":
                self._stage_said[name] = "done"
                self._say(f"stage {name}: done ({total} task(s))")

    def _cell_events(self, ended: bool) -> None:
        for cell in self.planned:
            snap = self.snapshot[cell.id]
            st, before = snap["state"], self._seen.get(cell.id)
            label = f"cell {cell.id} {snap['delta']}"
            if not ended:
                if st == "running" and cell.id not in self._started:
                    self._started.add(cell.id)
                    self._say(f"{label}: started ({snap['detail'] or 'running'})")
                continue
            if st in ("finished", "failed") and st != before:
                self.finished_now.append(cell.id)
                left = len([c for c in self.planned if self.snapshot.get(c.id, {}).get("state") not in ("finished", "failed")])
                tail = f" ({len(self.finished_now)}/{len(self.planned)} done, ~{clock_text(self.remaining())} left)" if left else ""
                if st == "finished":
                    value = "-" if snap["value"] is None else f"{snap['value']:.4g}"
                    self._say(f"{label}: finished, {snap['metric'] or 'metric'} = {value}{tail}")
                else:
                    self._say(f"{label}: failed: {snap['detail'][:300]}{tail}")
            self._seen[cell.id] = st

    def _unit_events(self, unit: str, rec: Mapping[str, Any]) -> None:
        if not self.units_on:
            return
        marks = self._marks.setdefault(unit, set())
        pct = 100 * rec["step"] // max(int(rec["total"]), 1)
        if rec["done"]:
            if "done" not in marks:
                marks.update({"done", *UNIT_MARKS})
                self._say(f"unit {rec['label']} ({unit}): trained, {rec['total']} steps"
                          + ("" if rec.get("loss") is None else f", loss {rec['loss']:.4g}"))
            return
        passed = [m for m in UNIT_MARKS if pct >= m and m not in marks]
        if passed:
            marks.update(m for m in UNIT_MARKS if pct >= m)
            self._say(f"unit {rec['label']} ({unit}): {self._unit_text(rec)} ({pct} %, ~{clock_text(unit_eta(rec))} left)")

    # ---- the estimate ----------------------------------------------------------------------------------------
    def remaining(self) -> Optional[float]:
        """Seconds left: elapsed per cell finished in this run times the cells left; before any, the slowest unit's."""
        left = [c for c in self.planned if self.snapshot.get(c.id, {}).get("state") not in ("finished", "failed")]
        if not left:
            return 0.0
        if self.finished_now:
            return (self.clock() - self.t0) / len(self.finished_now) * len(left)
        etas = [unit_eta(r) for r in self.unit_recs.values() if not r["done"]]
        etas = [e for e in etas if e is not None]
        return max(etas) if etas else None

    # ---- the live view ---------------------------------------------------------------------------------------
    def render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        counts = {s: sum(1 for c in self.planned if self.snapshot.get(c.id, {}).get("state") == s) for s in state.STATES}
        head = Text(f"sweep {self.sweep.spec.name}: {counts['finished']}/{len(self.planned)} cells finished"
                    + (f", {counts['failed']} failed" if counts["failed"] else "")
                    + f", {counts['running']} running  elapsed {clock_text(self.clock() - self.t0)}"
                    + f"  remaining ~{clock_text(self.remaining())}")
        stages = Text("stages: " + "  ".join(f"{n} {d}/{t}" for n in self.stage_order for d, t in [self.stages[n]]))
        cells = Table(box=None, pad_edge=False, show_edge=False, expand=False)
        cells.add_column("cell", no_wrap=True)
        cells.add_column("config delta", overflow="ellipsis", no_wrap=True, max_width=28)
        cells.add_column("state", overflow="ellipsis", no_wrap=True)
        cells.add_column(self._metric_name(), justify="right", no_wrap=True)
        planned = {c.id for c in self.planned}
        for cell in self.sweep.cells:
            snap = self.snapshot.get(cell.id)
            if snap is None:
                continue
            text = snap["state"] + (f": {snap['detail']}" if snap["detail"] else "")
            if cell.id not in planned and snap["state"] == "finished":
                text = "finished before"
            cells.add_row(cell.id[:8], snap["delta"], text, "" if snap["value"] is None else f"{snap['value']:.4g}")
        parts = [head, stages, cells]
        training = [(u, r) for u, r in self.unit_recs.items() if not r["done"]]
        if training and self.units_on:
            units = Table(box=None, pad_edge=False, show_edge=False, title=None)
            units.add_column("training unit", overflow="ellipsis", no_wrap=True, max_width=30)
            units.add_column("progress", no_wrap=True)
            units.add_column("left", justify="right", no_wrap=True)
            for u, r in training:
                units.add_row(f"{r['label']} ({u[:8]})", self._unit_text(r), f"~{clock_text(unit_eta(r))}")
            parts.append(units)
        return Group(*parts)

    def _metric_name(self) -> str:
        return next((s["metric"] for s in self.snapshot.values() if s.get("metric")), self.sweep.spec.metric or "metric")
