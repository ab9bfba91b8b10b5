"""The DAG a launcher runs: stages of tasks, each task one ``SweepTask`` call.

Stages run in order (DESIGN.md: aux -> experts -> evaluate); tasks inside a stage are independent
(one SLURM array, or up to ``max_parallel`` local subprocesses).  A launcher only decides *where*
tasks run; what they do is :class:`harness.sweep.tasks.SweepTask`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


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
