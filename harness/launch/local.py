"""Launchers on this machine: ``debug`` (in this process, stop at the first failure) and ``local``
(submitit's LocalExecutor: one subprocess per task, at most ``max_parallel`` at once).

Local tasks are submitit jobs like SLURM ones, so the same ``Checkpointable`` requeue path runs
on a laptop (FINDINGS: requeue works with the local executor too).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from harness.launch.base import Outcome, Stage, error_line

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes; a cell may train for hours


class DebugLauncher:
    """Every task in this process, in order; the first failure raises (fail fast, full traceback)."""

    name = "debug"

    def __init__(self, max_parallel: int = 1) -> None:
        self.max_parallel = 1

    def run(self, stages: list[Stage], folder: Path, detach: bool = False) -> Outcome:
        from harness.sweep.tasks import SweepTask

        out = Outcome()
        for st in stages:
            for task in st.tasks:
                out.results.append((task, SweepTask()(*task.args())))
        return out


class LocalLauncher:
    """submitit LocalExecutor subprocesses; a failed task is recorded and the sweep goes on."""

    name = "local"

    def __init__(self, max_parallel: int = 1, poll_s: float = 0.5) -> None:
        self.max_parallel = max(1, int(max_parallel))
        self.poll_s = poll_s

    def run(self, stages: list[Stage], folder: Path, detach: bool = False) -> Outcome:
        import submitit

        from harness.sweep.tasks import SweepTask

        executor = submitit.LocalExecutor(folder=str(folder / "submitit"))
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        out = Outcome()
        for st in stages:
            queue, running = list(st.tasks), []
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    task = queue.pop(0)
                    job = executor.submit(SweepTask(), *task.args())
                    out.jobs.setdefault(st.name, []).append(job.job_id)
                    running.append((task, job))
                time.sleep(self.poll_s)
                still = []
                for task, job in running:
                    if not job.done():
                        still.append((task, job))
                        continue
                    err: Optional[BaseException] = job.exception()
                    if err is None:
                        out.results.append((task, job.result()))
                    else:
                        out.errors.append((task, error_line(err).splitlines()[0]))
                running = still
        return out
