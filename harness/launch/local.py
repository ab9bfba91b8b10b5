"""Launchers on this machine: ``debug`` (in this process, stop at the first failure) and ``local``
(submitit's LocalExecutor: one subprocess per task, at most ``max_parallel`` at once).

Local tasks are submitit jobs like SLURM ones, so the same ``Checkpointable`` requeue path runs
on a laptop (FINDINGS: requeue works with the local executor too).

Stopping (README, Stopping): the ``local`` driver defers SIGTERM and SIGINT until its jobs have
stopped.  It sends each job SIGTERM (submitit's controller forwards it to the task: a training task
checkpoints at its next step, any other stops at once, and both end their MLflow runs KILLED and
release their locks), waits for them, then hands the signal on (``harness`` exits 128 + signal).
Jobs ignore SIGINT, so a Ctrl-C at the terminal, which reaches the whole process group, stops them
the same way, not through submitit's controller (which would SIGKILL them a second later).
``debug`` runs in this process: the CLI's SIGTERM handler and the training loop stop it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from harness.core.processes import descendants
from harness.core.registry import register
from harness.launch.base import Launcher, Outcome, Stage, Task, TaskFn, Watch, collect, error_line, no_watch
from harness.train.preemption import PreemptionGuard

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes; a cell may train for hours
STOP_GRACE_S = 120.0   # for a training task to finish its step and write its checkpoint; then SIGKILL
RESEND_S = 5.0         # SIGTERM again: one that reached a job while it started may have found no handler yet


@register("launcher", "debug")
class DebugLauncher(Launcher):
    """Every task in this process, in order; the first failure raises (fail fast, full traceback)."""

    name = "debug"
    in_process = True

    def __init__(self, max_parallel: int = 1, profile: Optional[str] = None) -> None:
        super().__init__(1)

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False,
            watch: Watch = no_watch) -> Outcome:
        out = Outcome()
        for st in stages:
            for i, task in enumerate(st.tasks):
                watch(st.name, i, len(st.tasks))
                out.results.append((task, task_fn(*task.args())))
            watch(st.name, len(st.tasks), len(st.tasks))
        return out

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str,
                       watch: Callable[[], None] = lambda: None) -> Outcome:
        fn(*args)   # one worker, in this process (the view reports its trials when it returns)
        return Outcome()


class StopOnSigterm:
    """A task as a local job: SIGTERM raises KeyboardInterrupt in it, so its ``finally`` blocks run.

    submitit's job process ignores SIGTERM (on SLURM it waits for SIGUSR2), which would leave an
    evaluating task running after the driver stopped.  A training loop takes the signal first,
    checkpoints at the next step boundary and hands it on here.  Not an ``Exception``: the sweep
    records no failure for a stopped task, and its cell stays pending.
    """

    def __init__(self, fn: TaskFn) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _interrupt_once)
        try:
            return self.fn(*args)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook (SIGUSR2 at the local timeout): resubmit this same call, as ``Checkpointable``."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _interrupt_once(signum: int, frame: Any) -> None:
    """Raise once; the driver's repeated SIGTERMs must not interrupt the unwinding (MLflow runs ending KILLED)."""
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


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

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False,
            watch: Watch = no_watch) -> Outcome:
        out = Outcome()
        with Jobs(self.executor(folder)) as jobs:
            for st in stages:
                queue, running = list(st.tasks), []
                while (queue or running) and not jobs.stopping:
                    while queue and len(running) < self.max_parallel and not jobs.stopping:
                        task = queue.pop(0)
                        job = jobs.submit(task_fn, task.args())
                        out.jobs.setdefault(st.name, []).append(job.job_id)
                        running.append((task, job))
                    time.sleep(self.poll_s)
                    running = _collect(running, out)
                    watch(st.name, len(st.tasks) - len(queue) - len(running), len(st.tasks))
                if jobs.stopping:
                    break
        return out

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str,
                       watch: Callable[[], None] = lambda: None) -> Outcome:
        with Jobs(self.executor(folder)) as jobs:
            started = [jobs.submit(fn, args) for _ in range(workers)]
            while not jobs.stopping and not all(j.done() for j in started):
                watch()
                time.sleep(self.poll_s)
        return collect(Outcome(jobs={"search": [j.job_id for j in started]}), started)


def _collect(running: list[tuple[Task, Any]], out: Outcome) -> list[tuple[Task, Any]]:
    """Record the finished jobs' results or one-line errors in ``out``; return the jobs still running."""
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
    return still


class Jobs:
    """The driver's submitit jobs: none outlives the ``with`` block, however it ends.

    Inside it SIGTERM and SIGINT only set :attr:`stopping` (a driver loop checks it between polls,
    so no signal lands between starting a job and recording it).  On leaving, jobs still running
    are stopped (:func:`stop_jobs`), then a received signal is handed on to the handler it was meant
    for (the CLI's: ``harness`` exits 128 + signal with its one-line 'interrupted' message).
    """

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.started: list[Any] = []
        self.guard = PreemptionGuard(tuple(s for s in (signal.SIGTERM, signal.SIGINT)
                                           if signal.getsignal(s) is not signal.SIG_IGN))

    @property
    def stopping(self) -> bool:
        return self.guard.received is not None

    def submit(self, fn: TaskFn, args: Sequence[Any]) -> Any:
        """Start ``fn(*args)`` as a job that stops on SIGTERM and ignores SIGINT (inherited by its processes)."""
        with _sigint_ignored():
            job = self.executor.submit(StopOnSigterm(fn), *args)
        self.started.append(job)
        return job

    def __enter__(self) -> "Jobs":
        self.guard.__enter__()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            stop_jobs([j for j in self.started if not j.done()])
        finally:
            if self.stopping and exc_type is None:
                self.guard.hand_on(0)   # raises (step 0: the driver has no checkpoint of its own)
            self.guard.__exit__()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a job starts: its controller and task inherit SIG_IGN (a Ctrl-C meanwhile is lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_jobs(jobs: Sequence[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Stop local submitit jobs and wait until none of their processes runs.

    SIGTERM to each job's controller, which forwards it to its task and waits for it; resent every
    ``RESEND_S`` to jobs still running; after ``grace_s``, SIGKILL to each remaining job's process
    tree.  (``LocalJob.cancel()`` sends the controller SIGINT, on which it sends the task SIGINT and
    SIGKILLs it a second later: no checkpoint; and these jobs ignore SIGINT.)
    """
    deadline, sent = time.time() + grace_s, 0.0
    while True:
        alive = [j for j in jobs if not j.done()]
        if not alive:
            return
        if time.time() >= deadline:
            break
        if time.time() - sent >= RESEND_S:
            for job in alive:
                _signal(int(job.job_id), signal.SIGTERM)   # a local job's id is its controller's pid
            sent = time.time()
        time.sleep(0.2)
    for job in alive:
        for pid in [int(job.job_id), *descendants(int(job.job_id))]:
            _signal(pid, signal.SIGKILL)
    reaped_by = time.time() + 10.0
    while any(not j.done() for j in alive) and time.time() < reaped_by:   # reap the controllers
        time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
