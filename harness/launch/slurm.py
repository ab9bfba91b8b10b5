"""SLURM launcher: one job array per stage, chained with ``--dependency=afterany`` (prepare -> units ->
evaluate), resources from a profile in ``slurm/<name>.yaml``; submitted through submitit.

``afterany`` (not ``afterok``): a failed unit job is recorded in its cell's ``failed.json`` and the
cell's evaluate job still runs and records the failure, so a sweep never hangs on
DependencyNeverSatisfied.  Tasks are ``Checkpointable``: on timeout/preemption (SIGUSR2, submitit's
``--signal``) submitit requeues the job, which resumes from the last atomic checkpoint.
``--dry-run`` prints the sbatch scripts with submitit's own ``_make_sbatch_string`` (FINDINGS), so the
text is what would be submitted; nothing is submitted.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from harness.core.errors import ConfigError
from harness.core.registry import register, suggest
from harness.launch.base import Launcher, Outcome, Stage, TaskFn, Watch, collect, describe_dag, error_line, no_watch

PROFILE_DIR = Path(__file__).resolve().parents[2] / "slurm"
PROFILE_KEYS = {"partition": str, "time_min": int, "nodes": int, "gpus_per_node": int, "tasks_per_node": int,
                "cpus_per_task": int, "mem_gb": (int, float),
                "account": str, "qos": str, "constraint": str, "setup": list, "max_num_timeout": int,
                "signal_delay_s": int, "additional": dict}


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """A SLURM profile by name (``slurm/NAME.yaml``) or path; unknown names and keys are ConfigErrors.

    ``nodes`` x ``tasks_per_node`` processes run one cell as one job (torch.distributed over SLURM's
    environment; DESIGN.md "Distributed execution"); ``tasks_per_node`` defaults to ``gpus_per_node``
    (one process per GPU) and to 1 without GPUs.
    """
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = profiles()
        raise ConfigError(f"launcher.profile: SLURM profile {name!r} does not exist ({path}).{suggest(name, known)} "
                          f"Available: {', '.join(known) or 'none'}", hint="add slurm/NAME.yaml or pick another")
    raw = yaml.safe_load(path.read_text()) or {}
    for key, value in raw.items():
        if key not in PROFILE_KEYS:
            raise ConfigError(f"{path}: {key}: unknown profile key.{suggest(key, PROFILE_KEYS)} Known: {', '.join(PROFILE_KEYS)}")
        if value is not None and not isinstance(value, PROFILE_KEYS[key]):
            raise ConfigError(f"{path}: {key}: expected {PROFILE_KEYS[key]}, got {value!r}")
    profile = {k: v for k, v in raw.items() if v is not None}
    for key in ("nodes", "tasks_per_node", "gpus_per_node"):
        if key in profile and profile[key] < (0 if key == "gpus_per_node" else 1):
            raise ConfigError(f"{path}: {key} must be >= {0 if key == 'gpus_per_node' else 1}, got {profile[key]}")
    gpus = int(profile.get("gpus_per_node", 0))
    tasks = int(profile.setdefault("tasks_per_node", max(1, gpus)))
    if gpus and tasks > gpus:
        raise ConfigError(f"{path}: tasks_per_node={tasks} exceeds gpus_per_node={gpus}",
                          hint="one process per GPU: set tasks_per_node to at most gpus_per_node")
    profile["_path"] = str(path)
    return profile


def node_gpus(partition: Optional[str] = None) -> Optional[int]:
    """The most GPUs any node (of ``partition``) has, from ``sinfo``'s GRES column; None where sinfo is absent."""
    import re
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    counts = [int(m) for m in re.findall(r"gpu(?::[\w-]+)?:(\d+)", out.stdout)]
    return max(counts, default=0)


def check_fits_nodes(profile: dict[str, Any]) -> None:
    """A profile asking for more GPUs per node than the cluster's nodes have is an error before submitting."""
    want = int(profile.get("gpus_per_node", 0))
    have = node_gpus(profile.get("partition")) if want else None
    if have is not None and want > have:
        where = f"partition {profile['partition']}" if profile.get("partition") else "this cluster"
        raise ConfigError(f"{profile['_path']}: gpus_per_node={want} but the nodes of {where} have at most {have} GPUs "
                          "(sinfo)", hint=f"set gpus_per_node <= {have}, and nodes > 1 for more GPUs per job")


def sbatch_parameters(profile: dict[str, Any], *, job_name: str, dependency: Optional[str],
                      array_parallelism: int) -> dict[str, Any]:
    """Profile -> keyword arguments of submitit's SlurmExecutor / ``_make_sbatch_string``."""
    p: dict[str, Any] = {"job_name": job_name, "time": int(profile.get("time_min", 60)),
                         "array_parallelism": int(array_parallelism), "stderr_to_stdout": True,
                         "signal_delay_s": int(profile.get("signal_delay_s", 90))}
    for ours, theirs in (("partition", "partition"), ("nodes", "nodes"), ("gpus_per_node", "gpus_per_node"),
                         ("tasks_per_node", "ntasks_per_node"), ("cpus_per_task", "cpus_per_task"),
                         ("account", "account"), ("qos", "qos"), ("constraint", "constraint"), ("setup", "setup")):
        if ours in profile:
            p[theirs] = profile[ours]
    if "mem_gb" in profile:
        p["mem"] = f"{int(profile['mem_gb'] * 1024)}MB"
    if profile.get("additional"):
        p["additional_parameters"] = dict(profile["additional"])
    if dependency:
        p["dependency"] = dependency
    return p


DEFAULT_PROFILE = "local_test"


@register("launcher", "slurm")
class SlurmLauncher(Launcher):
    """Submit each stage as a job array depending on the previous one; block unless ``detach``."""

    name = "slurm"
    default_parallel = 16
    detaches = True

    def __init__(self, max_parallel: int = 16, profile: Optional[str] = None, poll_s: float = 2.0) -> None:
        super().__init__(max_parallel)
        self.profile_name = profile or DEFAULT_PROFILE
        self.profile = load_profile(self.profile_name)   # a missing profile fails before anything is submitted
        self.poll_s = poll_s

    def check_submit(self) -> None:
        """Before submitting (not in dry runs, which may run off-cluster): the job fits the cluster's nodes."""
        check_fits_nodes(self.profile)

    @classmethod
    def check_config(cls, node: Any) -> None:
        load_profile(node.profile or DEFAULT_PROFILE)

    def dry_run(self, stages: list[Stage], folder: Path) -> str:
        """The DAG and, per stage, the sbatch script submitit would submit (dependencies as placeholders)."""
        from submitit.slurm.slurm import _make_sbatch_string

        import shlex
        import sys

        out = [f"profile {self.profile_name} ({PROFILE_DIR / (self.profile_name + '.yaml')})", describe_dag(stages)]
        prev = None
        sub = folder / "submitit" / "%j"
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(sub))])
        for st in stages:
            params = sbatch_parameters(self.profile, job_name=f"{folder.name}-{st.name}",
                                       dependency=f"afterany:<{prev} array job id>" if prev else None,
                                       array_parallelism=self.max_parallel)
            text = _make_sbatch_string(command=command, folder=sub, map_count=len(st.tasks), **params)
            out.append(f"# ---- sbatch script: stage {st.name} ({len(st.tasks)} array tasks) ----\n{text}")
            prev = st.name
        return "\n".join(out)

    def run(self, stages: list[Stage], folder: Path, task_fn: TaskFn, detach: bool = False,
            watch: Watch = no_watch) -> Outcome:
        import submitit

        out = Outcome(detached=detach)
        prev_id: Optional[str] = None
        submitted: list[tuple[Any, Any]] = []
        for st in stages:
            ex = submitit.SlurmExecutor(folder=str(folder / "submitit" / "%j"),
                                        max_num_timeout=int(self.profile.get("max_num_timeout", 3)))
            ex.update_parameters(**sbatch_parameters(self.profile, job_name=f"{folder.name}-{st.name}",
                                                     dependency=f"afterany:{prev_id}" if prev_id else None,
                                                     array_parallelism=self.max_parallel))
            with ex.batch():
                jobs = [ex.submit(task_fn, *t.args()) for t in st.tasks]
            out.jobs[st.name] = [j.job_id for j in jobs]
            prev_id = jobs[0].job_id.split("_")[0]
            submitted.extend(zip(st.tasks, jobs))
        if detach:
            return out
        pending = list(submitted)
        while pending:
            time.sleep(self.poll_s)
            still = []
            for task, job in pending:
                if not job.done(force_check=True):
                    still.append((task, job))
                    continue
                if job.state.startswith("CANCELLED"):
                    out.errors.append((task, "cancelled"))
                    continue
                err = job.exception()
                (out.errors.append((task, error_line(err).splitlines()[0])) if err is not None
                 else out.results.append((task, job.results()[0])))  # task 0 of a multi-task job
            pending = still
            for st in stages:
                watch(st.name, sum(1 for t, _ in submitted if t.stage == st.name) -
                      sum(1 for t, _ in pending if t.stage == st.name), len(st.tasks))
        return out

    def submit_workers(self, fn: TaskFn, args: Sequence[Any], workers: int, folder: Path, job_name: str,
                       watch: Callable[[], None] = lambda: None) -> Outcome:
        import submitit

        ex = submitit.SlurmExecutor(folder=str(folder / "submitit" / "%j"))
        ex.update_parameters(**sbatch_parameters(self.profile, job_name=job_name, dependency=None,
                                                 array_parallelism=workers))
        jobs = [ex.submit(fn, *args) for _ in range(workers)]
        while not all(j.done() for j in jobs):
            watch()
            time.sleep(self.poll_s)
        return collect(Outcome(jobs={"search": [j.job_id for j in jobs]}), jobs)
