"""Launchers on this machine: ``debug`` (in this process, stop at the first failure) and ``local``
(submitit's LocalExecutor: one subprocess per task, at most ``max_parallel`` at once).

Local tasks are submitit jobs like SLURM ones, so the same ``Checkpointable`` requeue path runs
on a laptop (FINDINGS: requeue works with the local executor too).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

from harness.core.registry import register
from harness.launch.base import Launcher, Outcome, Stage, TaskFn, collect, error_line

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes; a cell may train for hours


@register("launcher", "debug")
class DebugLauncher(Launcher):
    """Every task in this process, in order; the first failure raises (fail fast, full traceback)."""

    name = "debug"

    def __init__(self, max_parallel: int = 1, profile: Optional[str] = None) -> None:
        super().__init__(1)

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False) -> Outcome:
        out = Outcome()
        for st in stages:
            for task in st.tasks:
                out.results.append((task, task_fn(*task.args())))
        return out

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str) -> Outcome:
        fn(*args)   # one worker, in this process
        return Outcome()


@register("launcher", "local")
class LocalLauncher(Launcher):
    """submitit LocalExecutor subprocesses; a failed task is recorded and the sweep goes on."""

    name = "local"

    def __init__(self, max_parallel: int = 1, profile: Optional[str] = None, poll_s: float = 0.5) -> None:
        super().__init__(max_parallel)
        self.poll_s = poll_s

    @staticmethod
    def executor(folder: Path):
        import submitit

        executor = submitit.LocalExecutor(folder=str(folder / "submitit"))
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        return executor

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False) -> Outcome:
        executor = self.executor(folder)
        out = Outcome()
        for st in stages:
            queue, running = list(st.tasks), []
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    task = queue.pop(0)
                    job = executor.submit(task_fn, *task.args())
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

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str) -> Outcome:
        ex = self.executor(folder)
        jobs = [ex.submit(fn, *args) for _ in range(workers)]
        return collect(Outcome(jobs={"search": [j.job_id for j in jobs]}), jobs)
