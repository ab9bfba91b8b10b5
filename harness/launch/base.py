"""The DAG a launcher runs: stages of tasks, each task one call of the callable the sweep hands in.

Stages run in order (DESIGN.md: aux -> experts -> evaluate); tasks inside a stage are independent
(one SLURM array, or up to ``max_parallel`` local subprocesses).  A launcher only decides *where*
tasks run; what they do is the callable it is given (the sweep's ``SweepTask``), so this layer
never imports the sweep.  Launchers are plug-ins (``@register("launcher", NAME)``): the config
validates ``launcher.*`` through :meth:`Launcher.check_config` without importing them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass
class Task:
    """Arguments of one ``SweepTask()(stage, sweep_dir, cell_id, roles, sweep_run_id, sweep_name)`` call."""

    stage: str
    sweep_dir: str
    cell_id: str
    roles: Optional[list[str]] = None
    sweep_run_id: Optional[str] = None
    sweep_name: str = ""
    label: str = ""                   # for the DAG printout only

    def args(self) -> tuple[Any, ...]:
        return (self.stage, self.sweep_dir, self.cell_id, self.roles, self.sweep_run_id, self.sweep_name)


@dataclasses.dataclass
class Stage:
    name: str
    tasks: list[Task]


@dataclasses.dataclass
class Outcome:
    """What a launcher reports: per task, its result or its one-line error (blocking launchers only)."""

    results: list[tuple[Task, Any]] = dataclasses.field(default_factory=list)
    errors: list[tuple[Task, str]] = dataclasses.field(default_factory=list)
    jobs: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # stage -> job ids (submitit)
    detached: bool = False


def describe_dag(stages: list[Stage]) -> str:
    """Plain-text DAG: one line per stage with its dependency, one indented line per task."""
    lines, prev = [], None
    for st in stages:
        if not st.tasks:
            continue
        dep = f" (after {prev})" if prev else ""
        lines.append(f"stage {st.name}: {len(st.tasks)} task(s){dep}")
        lines.extend(f"  - {t.label or t.cell_id}" for t in st.tasks)
        prev = st.name
    return "\n".join(lines) if lines else "nothing to run: every cell is finished"


def error_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500]


TaskFn = Callable[..., Any]   # called as fn(*task.args()); picklable (submitit sends it to another process)
# called by a blocking launcher between polls (and between in-process tasks) as watch(stage name, tasks done,
# tasks in the stage): the sweep's progress view reads the rest from disk (harness.sweep.progress)
Watch = Callable[[str, int, int], None]


def no_watch(stage: str, done: int, total: int) -> None:
    pass


class Launcher:
    """Where tasks run.  Subclasses: ``run`` a DAG of stages, ``submit_workers`` for n copies of one call."""

    name = ""
    default_parallel = 1      # tasks at once when neither the config nor --max-parallel says
    detaches = False          # True: ``run(..., detach=True)`` submits and returns (a scheduler holds the jobs)
    in_process = False        # True: tasks run in this process and print their own progress (no live view over them)

    def __init__(self, max_parallel: int = 1, profile: Optional[str] = None) -> None:
        self.max_parallel = max(1, int(max_parallel))

    def check_submit(self) -> None:
        """Checks that need the cluster (not run by dry runs): e.g. the job fits the nodes. ConfigError if not."""

    def dry_run(self, stages: list[Stage], folder: Path) -> str:
        """What ``run`` would do, as text; nothing is started."""
        return describe_dag(stages)

    @classmethod
    def check_config(cls, node: Any) -> None:
        """Checks of the launcher node beyond types (e.g. the SLURM profile exists); ConfigError naming the key."""

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False,
            watch: Watch = no_watch) -> Outcome:
        raise NotImplementedError

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str,
                       watch: Callable[[], None] = lambda: None) -> Outcome:
        """Run ``fn(*args)`` in ``workers`` jobs and wait for them (Optuna search workers), calling ``watch()``
        between polls (the search's progress view, :mod:`harness.sweep.search_progress`)."""
        raise NotImplementedError


def collect(out: Outcome, jobs: list[Any]) -> Outcome:
    """Wait for submitit jobs; a crashed one is recorded as a one-line error, not raised."""
    for j in jobs:
        try:
            j.results()   # every task of a multi-task job
        except Exception as err:  # noqa: BLE001 - recorded, the caller reports it
            out.errors.append((None, error_line(err).splitlines()[0]))
    return out
