"""SLURM launcher: sbatch text of --dry-run, and a real single-node SLURM cluster (slurm/start.sh).

The integration test installs (Debian packages) and starts slurmctld/slurmd/slurmdbd/munge/MariaDB
with fake GPUs on this machine, submits sweeps through the real ``sbatch``, cancels a job, preempts
a running one (SIGUSR2, as SLURM does before a time limit or preemption) so submitit requeues it,
and checks the results in MLflow.  It skips only where installing is impossible (no root/sudo/apt).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from harness.sweep import state
from harness.sweep.load import load_sweep
from harness.sweep.runner import run_sweep

pytestmark = pytest.mark.xdist_group("slurm")   # one single-node SLURM cluster per worker: its tests run on one worker, in order (scripts/test.sh: -n 2 --dist loadgroup)

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=gmm_mini", "train.steps=10", "train.batch_size=32", "backbone.width=32", "backbone.depth=1",
        "eval.n_samples=100", "eval.reference_n=100", "sampler.steps=5", "run.progress=false"]


def sweep_file(path: Path, extra=(), grid="grid: {train.seed: [0, 1]}\n") -> Path:
    path.write_text("base:\n" + "".join(f"  - {o}\n" for o in [*TINY, *extra]) + grid)
    return path


def test_dry_run_prints_the_sbatch_scripts_and_the_dag_and_submits_nothing(workdir, tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: gpu\ntime_min: 90\ngpus_per_node: 1\ncpus_per_task: 4\nmem_gb: 8\n"
                       "account: proj42\nqos: high\nconstraint: a100\n")
    path = sweep_file(tmp_path / "d.yaml", ["method=naive_split", "method.n=2", f"launcher.profile={profile}",
                                            "launcher=slurm", "launcher.max_parallel=3"])
    lines: list[str] = []
    out = run_sweep(path, dry_run=True, echo=lambda *a: lines.append(" ".join(map(str, a))))
    text = "\n".join(lines)
    assert [s.name for s in out["stages"]] == ["units", "evaluate"]
    units, evaluate = text.split("# ---- sbatch script: stage units")[1].split("# ---- sbatch script: stage evaluate")
    for directive in ("--array=0-3%3", "--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=4",
                      "--mem=8192MB", "--account=proj42", "--qos=high", "--constraint=a100", "--signal=USR2@90",
                      "--job-name=d-units"):
        assert f"#SBATCH {directive}" in units, directive
    assert "#SBATCH --array=0-1%2" in evaluate and "#SBATCH --dependency='afterany:<units array job id>'" in evaluate
    assert "--dependency" not in units
    assert "stage units: 4 task(s)" in text and "stage evaluate: 2 task(s) (after units)" in text
    assert not (workdir / "sweeps").exists()


def test_a_sweep_of_multi_gpu_cells_is_an_array_of_multi_task_jobs(workdir, tmp_path):
    """Issue 14 item 3: every array task of a stage is one cell's whole job, 2 nodes x 8 tasks (one per GPU),
    each task started by srun so the 16 processes of a cell join one process group from SLURM's environment."""
    profile = tmp_path / "pod.yaml"
    profile.write_text("partition: gpu\ntime_min: 600\nnodes: 2\ngpus_per_node: 8\ncpus_per_task: 12\nmem_gb: 900\n")
    path = sweep_file(tmp_path / "pod.yaml.sweep.yaml", [f"launcher.profile={profile}", "launcher=slurm"],
                      grid="grid: {train.seed: [0, 1, 2]}\n")
    lines: list[str] = []
    run_sweep(path, dry_run=True, echo=lambda *a: lines.append(" ".join(map(str, a))))
    units = "\n".join(lines).split("# ---- sbatch script: stage units")[1].split("# ---- sbatch script: stage evaluate")[0]
    for directive in ("--array=0-2%", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12"):
        assert f"#SBATCH {directive}" in units, directive
    (srun,) = [line for line in units.splitlines() if line.startswith("srun ")]
    assert "%t_log.out" in srun and "submitit.core._submit" in srun   # one worker per task, a log per task rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM (2 fake GPUs), started for this module and stopped by PID files."""
    d = Path(f"/tmp/harness-slurm-test-{os.getpid()}")
    env = dict(os.environ, HARNESS_SLURM_DIR=str(d), HARNESS_SLURM_DB_PORT=str(_free_port()),
               HARNESS_SLURM_DBD_PORT=str(_free_port()), HARNESS_SLURM_CTL_PORT=str(_free_port()),
               HARNESS_SLURM_D_PORT=str(_free_port()))
    install = subprocess.run(["bash", str(REPO / "slurm" / "install.sh")], capture_output=True, text=True, env=env)
    if install.returncode == 3:
        pytest.skip(f"cannot install SLURM here: {install.stderr.strip()}")
    assert install.returncode == 0, install.stderr
    t0 = time.time()
    start = subprocess.run(["bash", str(REPO / "slurm" / "start.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    conf = start.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield {"conf": conf, "dir": d, "start_s": time.time() - t0}
    subprocess.run(["bash", str(REPO / "slurm" / "stop.sh")], env=env, timeout=60)


def _sacct_state(job_id: str, conf: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                         env=dict(os.environ, SLURM_CONF=conf))
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def _wait(pred, timeout: float, what: str, step: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slow
def test_real_slurm_sweep_cancel_and_preemption_requeue(slurm_cluster, workdir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from harness.sweep.status import print_status

    assert slurm_cluster["start_s"] < 60
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["conf"])
    conf = slurm_cluster["conf"]
    client = lambda: MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")  # noqa: E731

    # 1. submit-and-exit: a 2-cell sweep as two arrays (units -> evaluate) through the real sbatch
    path = sweep_file(tmp_path / "s.yaml")
    t0 = time.time()
    out = run_sweep(path, launcher="slurm", detach=True, echo=lambda *a: None)
    assert time.time() - t0 < 60 and out["outcome"].detached
    sweep = load_sweep(path)
    jobs = json.loads((sweep.dir / "jobs.json").read_text())
    assert jobs["launcher"] == "slurm" and len(jobs["units"]) == 2 and len(jobs["evaluate"]) == 2
    results = [state.cell_dir(sweep.dir, c.id) / "result.json" for c in sweep.cells]
    _wait(lambda: all(p.exists() for p in results), 420, "both cells to finish on SLURM")
    lines: list[str] = []
    status = print_status(str(path), echo=lambda *a: lines.append(" ".join(map(str, a))))
    assert [r["state"] for r in status["rows"]] == ["finished", "finished"]
    assert set(status["mlflow"].values()) == {"FINISHED"}
    _wait(lambda: all(s == "COMPLETED" for st in print_status(str(path), echo=lambda *a: None)["slurm"].values()
                      for s in st.values()), 60, "sacct to report COMPLETED")
    for r in status["rows"]:
        run = client().get_run(r["run_id"])
        assert run.data.tags["harness.cell_id"] == r["id"] and run.data.metrics

    # 2. cancel: the evaluate array of a new cell is cancelled while it waits on its units
    path2 = sweep_file(tmp_path / "c.yaml", grid="grid: {train.seed: [5]}\n")
    run_sweep(path2, launcher="slurm", detach=True, echo=lambda *a: None)
    sweep2 = load_sweep(path2)
    jobs2 = json.loads((sweep2.dir / "jobs.json").read_text())
    evaluate_job = jobs2["evaluate"][0]
    subprocess.run(["scancel", evaluate_job.split("_")[0]], check=True, env=dict(os.environ, SLURM_CONF=conf))
    _wait(lambda: _sacct_state(evaluate_job.split("_")[0], conf).startswith("CANCELLED"), 60, "the cancel")
    _wait(lambda: _sacct_state(jobs2["units"][0].split("_")[0], conf) == "COMPLETED", 300, "the units job")
    assert state.cell_state(sweep2.dir, sweep2.cells[0].id) == "pending"   # cancelled: not finished, not lost
    again = run_sweep(path2, launcher="slurm", echo=lambda *a: None)      # re-run: only the evaluate task
    assert [s.name for s in again["stages"]] == ["evaluate"]
    assert [r["state"] for r in again["summary"]["rows"]] == ["finished"]

    # 3. preemption: SIGUSR2 to a running unit job; submitit checkpoints, requeues, and it resumes
    path3 = sweep_file(tmp_path / "p.yaml", ["train.steps=400", "train.checkpoint_every=20"],
                       grid="grid: {train.seed: [9]}\n")
    run_sweep(path3, launcher="slurm", detach=True, echo=lambda *a: None)
    sweep3 = load_sweep(path3)
    unit_job = json.loads((sweep3.dir / "jobs.json").read_text())["units"][0]
    from harness.pipeline.assemble import method_for

    unit_dir = method_for(sweep3.cells[0].cfg, prepare=False).units()["model"].directory(workdir)
    _wait(lambda: (unit_dir / "mlflow_run.json").exists() and any(unit_dir.glob("**/ckpt_*.json")), 300, "a first checkpoint")
    run_before = json.loads((unit_dir / "mlflow_run.json").read_text())["run_id"]
    assert not (unit_dir / "done.json").exists(), "unit finished before it could be preempted: raise train.steps"
    subprocess.run(["scancel", "--signal=USR2", unit_job], check=True, env=dict(os.environ, SLURM_CONF=conf))
    result3 = state.cell_dir(sweep3.dir, sweep3.cells[0].id) / "result.json"
    _wait(result3.exists, 480, "the preempted sweep to finish after requeue")
    log = "\n".join(p.read_text(errors="replace") for p in (sweep3.dir / "submitit").glob(f"{unit_job}*/*log.out"))
    assert "requeue" in log.lower(), log[-2000:]
    assert json.loads((unit_dir / "mlflow_run.json").read_text())["run_id"] == run_before   # same MLflow run
    unit_run = client().get_run(run_before)
    assert unit_run.info.status == "FINISHED"


@pytest.mark.slow
def test_real_slurm_two_task_job_trains_what_one_process_trains_and_resumes_after_requeue(slurm_cluster, workdir,
                                                                                        tmp_path, monkeypatch):
    """A cell as one 2-task SLURM job (2 fake GPUs; gloo on the CPU): the tasks join one process group from
    SLURM's environment, rank 0 records; preempted by SIGUSR2, it checkpoints at the next step, requeues
    into the same MLflow run and resumes at that step."""
    from harness.pipeline.assemble import method_for
    from harness.train import train_unit
    from harness.train.checkpoint import load_checkpoint

    from harness.core.errors import ConfigError

    monkeypatch.setenv("SLURM_CONF", slurm_cluster["conf"])
    conf = slurm_cluster["conf"]
    two_task = ["launcher=slurm", "launcher.profile=" + str(REPO / "slurm" / "local_test_2task.yaml")]

    # 0. a job asking for more GPUs per node than the nodes have is one line before anything is submitted
    big = tmp_path / "big.yaml"
    big.write_text((REPO / "slurm" / "local_test_2task.yaml").read_text().replace("gpus_per_node: 2", "gpus_per_node: 4")
                   .replace("tasks_per_node: 2", "tasks_per_node: 4"))
    path0 = sweep_file(tmp_path / "b.yaml", ["launcher=slurm", f"launcher.profile={big}"], grid="grid: {train.seed: [0]}\n")
    with pytest.raises(ConfigError, match=r"gpus_per_node=4 but the nodes of partition debug have at most 2 GPUs"):
        run_sweep(path0, launcher="slurm", echo=lambda *a: None)
    assert not (workdir / "sweeps" / "b").exists()

    # 1. one cell as a 2-task job, preempted by SIGUSR2 while it trains: checkpoint at the next step -> requeue ->
    #    resume there, in the same MLflow run; its weights are those one process trains (DDP over two half batches)
    path = sweep_file(tmp_path / "p2.yaml", [*two_task, "train.steps=1500", "train.checkpoint_every=100000"],
                      grid="grid: {train.seed: [4]}\n")
    run_sweep(path, launcher="slurm", detach=True, echo=lambda *a: None)
    sweep = load_sweep(path)
    unit_job = json.loads((sweep.dir / "jobs.json").read_text())["units"][0]
    spec = method_for(sweep.cells[0].cfg, prepare=False).units()["model"]
    unit_dir = spec.directory(workdir)
    _wait(lambda: (unit_dir / "mlflow_run.json").exists(), 300, "the 2-task unit job to start training")
    # signal only once a step is done (progress.json is written every train.log_every steps): on a loaded
    # machine a fixed sleep could land before the first step, and "resumed at the signal's step" would be 0
    _wait(lambda: (state.read_json(unit_dir / "progress.json") or {}).get("step", 0) > 0, 300,
          "the 2-task unit job to finish its first logged steps")
    run_before = json.loads((unit_dir / "mlflow_run.json").read_text())["run_id"]
    subprocess.run(["scancel", "--signal=USR2", unit_job], check=True, env=dict(os.environ, SLURM_CONF=conf))
    result = state.cell_dir(sweep.dir, sweep.cells[0].id) / "result.json"
    _wait(result.exists, 600, "the preempted 2-task sweep to finish after requeue")
    done = json.loads((unit_dir / "done.json").read_text())
    assert 0 < done["resumed_from"] < 1500 and done["world_size"] == 2   # resumed at the signal's checkpoint
    log = "\n".join(p.read_text(errors="replace") for p in (sweep.dir / "submitit").glob(f"{unit_job}*/*log.out"))
    assert "requeue" in log.lower(), log[-2000:]
    assert json.loads((unit_dir / "mlflow_run.json").read_text())["run_id"] == run_before
    ref = train_unit(spec, workdir=tmp_path / "ref", progress=False)
    a = load_checkpoint(unit_dir / done["checkpoint"])["model"]
    b = load_checkpoint(spec.directory(tmp_path / "ref") / ref["checkpoint"])["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-4, rtol=1e-3), name


def test_the_rendezvous_port_of_a_slurm_job_is_one_per_job_and_outside_the_ephemeral_range():
    """Every task of a job derives the same port from SLURM_JOB_ID alone; never in Linux's ephemeral range
    (32768-60999), where a busy node's outgoing connections took submitit's pick (EADDRINUSE seen in CI)."""
    from harness.core.dist import master_port_for_job

    ports = [master_port_for_job(str(j)) for j in range(2000)] + [master_port_for_job(f"{j}_3") for j in range(200)]
    assert all(1024 < p < 32768 for p in ports)
    assert master_port_for_job("4242") == master_port_for_job("4242") and len(set(ports)) > 1500
