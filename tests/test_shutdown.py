"""Clean shutdown (issue 19 item 4): SIGTERM or SIGINT to `harness ui`, `harness sweep` or `harness run`.

Real commands in real subprocesses, real signals.  Each test waits until the command is really working
(the UI answers /health, a unit has a checkpoint), reads the command's process tree from /proc, sends the
signal, then checks: the exit code and the one-line message, no process of that tree alive, the port
or the locks free, nothing half-written, no MLflow run left RUNNING, and (where it applies) that the same
command run again finishes from what was checkpointed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pytest

from harness.sweep import state
from harness.sweep.load import load_sweep
from harness.tables.ui import free_port, port_free

pytestmark = pytest.mark.xdist_group("ports")   # tests that pick a free TCP port run on one worker, so two never pick the same one (scripts/test.sh: -n 2 --dist loadgroup)

HARNESS = str(Path(sys.executable).with_name("harness"))
RESUME = "interrupted: re-run the same command to resume"
# long enough to be mid-training when stopped (a checkpoint every 50 steps), short enough to finish on a re-run
TRAIN = ["experiment=gmm_mini", "train.steps=1500", "train.checkpoint_every=50", "train.batch_size=32",
         "backbone.width=32", "backbone.depth=1", "eval.n_samples=100", "eval.reference_n=100", "sampler.steps=5",
         "run.progress=false"]


# ---- the process tree, from /proc -------------------------------------------------------------------------

def _stat(pid: int) -> Optional[list[str]]:
    """/proc/<pid>/stat after "pid (comm)": state, ppid, ..., start time at index 19; None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int) -> dict[int, str]:
    """Every process below ``pid``: {pid: start time} (the start time tells it from a later process with its pid)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (s := _stat(int(d.name))) is not None:
            parent[int(d.name)] = int(s[1])
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child in [c for c, pp in parent.items() if pp == p]:
            if (s := _stat(child)) is not None:
                out[child] = s[19]
                todo.append(child)
    return out


def alive(procs: dict[int, str]) -> list[int]:
    """The processes of ``procs`` still running (zombies are dead: they hold no port, lock or memory)."""
    return [p for p, start in procs.items() if (s := _stat(p)) is not None and s[19] == start and s[0] != "Z"]


def _kill(procs: dict[int, str]) -> None:
    for p in alive(procs):
        os.kill(p, signal.SIGKILL)


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to the default, so Python installs its Ctrl-C handler.

    A shell starts background commands with SIGINT ignored, and Python keeps an ignored SIGINT ignored: a test
    session launched with ``&`` (a CI wrapper, ``nohup``) would otherwise send SIGINT to a child that cannot see it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(ready: Callable[[], bool], proc: Optional[subprocess.Popen], timeout_s: float, what: str,
               log: Optional[Path] = None) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        if time.time() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)


# ---- harness ui -------------------------------------------------------------------------------------------

def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop_ui(cmd: list[str], port: int, sig: int, log: Path) -> None:
    """Start `harness ui`, signal it once it answers, check it stopped its server group and freed the port."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
    server: dict[int, str] = {}
    try:
        wait_until(lambda: _healthy(port), proc, 240, "/health answer", log)
        server = tree(proc.pid)
        assert len(server) >= 2, server   # the mlflow process and the uvicorn worker it starts
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        assert "stopping the MLflow UI" in log.read_text()
        assert alive(server) == []
        assert port_free(port)
    finally:
        proc.kill()
        _kill(server)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_its_whole_server_group_and_frees_the_port(workdir, tmp_path, sig):
    from harness.track import Tracker

    uri = f"sqlite:///{workdir}/mlflow.db"
    Tracker(uri, "harness")
    port = free_port(5810 if sig == signal.SIGTERM else 5840)
    cmd = [HARNESS, "ui", "--port", str(port), f"tracking.uri={uri}"]
    _stop_ui(cmd, port, sig, tmp_path / "ui.log")
    if sig == signal.SIGTERM:   # the same command again gets the same port
        _stop_ui(cmd, port, signal.SIGTERM, tmp_path / "ui2.log")


# ---- harness run ------------------------------------------------------------------------------------------

def _runs(workdir: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _checkpoints(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("units/*/ckpt_*.pt"))


def _half_written(workdir: Path) -> list[Path]:
    """Temp files of atomic writes (``.<name>.tmp-<pid>``) left behind."""
    return [p for p in workdir.rglob(".*") if ".tmp-" in p.name]


def _unit_locks_held(workdir: Path) -> list[Path]:
    return [p for p in workdir.glob("units/*.lock") if state.is_locked(p)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_run_checkpoints_ends_its_runs_killed_and_a_rerun_resumes(workdir, tmp_path, sig):
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([HARNESS, "run", *TRAIN], stdout=out, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_default_sigint)
    children: dict[int, str] = {}
    try:
        wait_until(lambda: bool(_checkpoints(workdir)), proc, 240, "unit checkpoint", log)
        children = tree(proc.pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        proc.kill()
        _kill(children)
    assert log.read_text().strip().splitlines()[-1] == RESUME
    assert alive(children) == []
    assert _unit_locks_held(workdir) == [] and _half_written(workdir) == []
    runs = {r.data.tags["harness.kind"]: r for r in _runs(workdir)}
    assert {k: r.info.status for k, r in runs.items()} == {"experiment": "KILLED", "unit": "KILLED"}
    stopped_at = max(int(p.stem.split("_")[1]) for p in _checkpoints(workdir))   # written on the signal

    again = subprocess.run([HARNESS, "run", *TRAIN], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (done,) = workdir.glob("units/*/done.json")
    assert json.loads(done.read_text())["resumed_from"] == stopped_at > 0
    after = {r.data.tags["harness.kind"]: r for r in _runs(workdir)}
    assert {k: (r.info.run_id, r.info.status) for k, r in after.items()} == \
        {k: (r.info.run_id, "FINISHED") for k, r in runs.items()}   # the same MLflow runs, resumed


# ---- harness sweep ----------------------------------------------------------------------------------------

def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "stop.yaml"
    path.write_text("base:\n" + "".join(f"  - {o}\n" for o in TRAIN) + "grid: {train.seed: [0, 1]}\n")
    return path


def _both_units_training(workdir: Path) -> bool:
    return len({p.parent for p in _checkpoints(workdir)}) == 2


def _assert_stopped_cleanly(workdir: Path, path: Path, procs: dict[int, str]) -> None:
    """No process left, no lock held, no cell recorded finished or failed, nothing half-written, nothing RUNNING."""
    assert alive(procs) == []
    sweep = load_sweep(path)
    assert [state.cell_state(sweep.dir, c.id) for c in sweep.cells] == ["pending", "pending"]
    assert [p for p in sweep.dir.glob("cells/*/task-*.lock") if state.is_locked(p)] == []
    assert _unit_locks_held(workdir) == [] and _half_written(workdir) == []
    statuses = sorted((r.data.tags["harness.kind"], r.info.status) for r in _runs(workdir))
    assert statuses == [("sweep", "KILLED"), ("unit", "KILLED"), ("unit", "KILLED")]


def _sweep_cmd(path: Path, launcher: str = "local") -> list[str]:
    return [HARNESS, "sweep", str(path), "--launcher", launcher, "--max-parallel", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the driver", "Ctrl-C to its process group"])
def test_a_stopped_local_sweep_stops_its_jobs_and_a_rerun_resumes_them(workdir, tmp_path, how):
    path, log = _sweep_file(tmp_path), tmp_path / "sweep.log"
    with open(log, "w") as out:   # its own session, as a shell starts a foreground job in its own process group
        proc = subprocess.Popen(_sweep_cmd(path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_sigint)
    jobs: dict[int, str] = {}
    try:
        wait_until(lambda: _both_units_training(workdir), proc, 300, "checkpoint of both cells' units", log)
        jobs = tree(proc.pid)
        assert sum("submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_text() for p in jobs) == 2
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)   # what the terminal sends: driver, controllers and tasks at once
        code = proc.wait(timeout=180)
    finally:
        proc.kill()
        _kill(jobs)
    assert code == (128 + signal.SIGTERM if how.startswith("SIGTERM") else 130)
    assert log.read_text().strip().splitlines()[-1] == RESUME
    _assert_stopped_cleanly(workdir, path, jobs)
    # each task stopped where it was told to: SIGTERM, handled (a training task checkpoints first)
    logs = list(load_sweep(path).dir.glob("submitit/*_0_log.err"))
    assert len(logs) == 2 and all("KeyboardInterrupt: signal 15" in p.read_text() for p in logs)
    if how.startswith("SIGTERM"):
        stopped_at = {p.parent.name: max(int(c.stem.split("_")[1]) for c in p.parent.glob("ckpt_*.pt"))
                      for p in _checkpoints(workdir)}
        again = subprocess.run(_sweep_cmd(path), capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "2 finished" in again.stdout
        resumed = {d.parent.name: json.loads(d.read_text())["resumed_from"] for d in workdir.glob("units/*/done.json")}
        assert resumed == stopped_at


@pytest.mark.slow
def test_a_detached_sweep_stops_cleanly_on_sigterm_to_its_driver_pid(workdir, tmp_path):
    path = _sweep_file(tmp_path)
    out = subprocess.run([*_sweep_cmd(path), "--detach"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep_dir = load_sweep(path).dir
    pid = int((sweep_dir / "driver.pid").read_text())
    driver = {pid: _stat(pid)[19]}
    jobs: dict[int, str] = {}
    try:
        wait_until(lambda: _both_units_training(workdir) or not alive(driver), None, 300,
                   "checkpoint of both cells' units", sweep_dir / "driver.log")
        assert alive(driver), (sweep_dir / "driver.log").read_text()[-3000:]
        jobs = {**driver, **tree(pid)}
        os.kill(pid, signal.SIGTERM)   # README, Stopping: kill $(cat <sweep dir>/driver.pid)
        wait_until(lambda: alive(driver) == [], None, 180, "exit of the driver", sweep_dir / "driver.log")
    finally:
        _kill(jobs or driver)
    assert (sweep_dir / "driver.log").read_text().strip().splitlines()[-1] == RESUME
    _assert_stopped_cleanly(workdir, path, jobs)


@pytest.mark.slow
def test_sigterm_to_a_debug_sweep_stops_in_process_and_records_no_failure(workdir, tmp_path):
    path, log = _sweep_file(tmp_path), tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_sweep_cmd(path, "debug"), stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
    try:
        wait_until(lambda: bool(_checkpoints(workdir)), proc, 240, "unit checkpoint", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert log.read_text().strip().splitlines()[-1] == RESUME
    sweep = load_sweep(path)
    assert [state.cell_state(sweep.dir, c.id) for c in sweep.cells] == ["pending", "pending"]
    assert _unit_locks_held(workdir) == [] and _half_written(workdir) == []
    assert sorted((r.data.tags["harness.kind"], r.info.status) for r in _runs(workdir)) == \
        [("sweep", "KILLED"), ("unit", "KILLED")]
