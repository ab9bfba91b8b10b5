"""Where a running Optuna search is, read from its study between the launcher's polls.

The search's workers (local subprocesses, SLURM array tasks) write every trial into the study's storage
(a journal file or an RDB, ``harness.sweep.search.study``); the driver reads it back, so this needs no IPC,
like :mod:`harness.sweep.progress` for grid sweeps.  On a terminal (rich ``Live``): the trial counts by
state of ``n_trials``, the best so far, the last trials with their parameters and values, elapsed time
and an estimate of what remains (elapsed per finished trial times the trials left).  Off a terminal (CI,
SLURM logs): one plain line per event: a trial started (its parameters), completed (value, and the best
so far), pruned (the constraint that refused it) or failed (its error).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from harness.sweep.progress import REFRESH_S, LiveView, clock_text

SHOWN = 8                     # trials in the live view


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class SearchProgress(LiveView):
    """Progress of one search run: use as a context manager around ``launcher.submit_workers(..., watch=...)``."""

    def __init__(self, study, n_trials: int, *, direction: str = "minimize", live: Optional[bool] = None,
                 echo: Callable[[str], Any] = print, console=None, clock: Callable[[], float] = time.time) -> None:
        self.study, self.n_trials, self.direction = study, int(n_trials), direction
        self.live_on, self.echo, self.console, self.clock = live, echo, console, clock
        self.t0 = clock()
        self._live = None
        self._last = float("-inf")
        self._said: dict[int, str] = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        self.finished_now = 0
        self.trials: list[Any] = []

    def watch(self) -> None:
        """Launcher callback between polls."""
        self.poll()

    def _best(self):
        done = [t for t in self.trials if t.state.name == "COMPLETE" and t.value is not None]
        if not done:
            return None
        return (min if self.direction == "minimize" else max)(done, key=lambda t: t.value)

    def poll(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < REFRESH_S:
            return
        self._last = now
        self.trials = self.study.get_trials(deepcopy=False)
        for t in self.trials:
            state = t.state.name
            before = self._said.get(t.number)
            if before == state:
                continue
            if before is None and state != "RUNNING" and self._live is None:
                self._event(t, "RUNNING")                    # it started and ended between two polls
            self._said[t.number] = state
            if state != "RUNNING":
                self.finished_now += 1
            if not self._live:
                self._event(t, state)
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    def _event(self, t, state: str) -> None:
        if state == "RUNNING":
            self.echo(f"trial #{t.number} started: {_params(t.params) or '(parameters not drawn yet)'}")
        elif state == "COMPLETE":
            best = self._best()
            tail = f" (best #{best.number}: {best.value:.4g})" if best is not None else ""
            self.echo(f"trial #{t.number} complete: {t.value:.4g}{tail}; {self.counts_text()}")
        elif state == "PRUNED":
            attrs = {k: v for k, v in t.user_attrs.items() if k not in ("pid", "host", "cell_id")}
            self.echo(f"trial #{t.number} pruned: " + " ".join(x for x in (_params(t.params), _params(attrs)) if x))
        elif state == "FAIL":
            self.echo(f"trial #{t.number} failed: {t.user_attrs.get('error', 'no error recorded')}")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
        return out

    def eta(self) -> Optional[float]:
        ended = sum(n for s, n in self.counts().items() if s != "running")
        if self.finished_now <= 0:
            return None
        left = max(0, self.n_trials - ended)
        return (self.clock() - self.t0) / self.finished_now * left

    def counts_text(self) -> str:
        c = self.counts()
        ended = sum(n for s, n in c.items() if s != "running")
        parts = [f"{n} {s}" for s, n in sorted(c.items())]
        return f"{ended}/{self.n_trials} trials ended ({', '.join(parts) or 'none yet'})"

    def render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        best = self._best()
        head = Text(f"search: {self.counts_text()}; elapsed {clock_text(self.clock() - self.t0)}, "
                    f"left ~{clock_text(self.eta())}")
        if best is not None:
            head.append(f"\nbest #{best.number}: {best.value:.4g} with {_params(best.params)}")
        table = Table(show_edge=False, pad_edge=False, expand=False)
        for col in ("trial", "state", "value", "parameters"):
            table.add_column(col, overflow="fold")
        for t in self.trials[-SHOWN:]:
            table.add_row(f"#{t.number}", t.state.name.lower(), "" if t.value is None else f"{t.value:.4g}",
                          _params(t.params))
        return Group(head, table)
