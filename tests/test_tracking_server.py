"""Every job of a sweep logs to one MLflow tracking server (README, Tracking on a cluster).

The slow test starts a real server the way ``harness ui --host`` does (``start_ui(cluster=True)``: SQLite
backend in tmp_path, artifacts uploaded through the server), on 127.0.0.1, and has 8 writer processes log
to it at once through ``Tracker``; everything is read back through ``MlflowClient``.  The others check
what a server URI changes elsewhere: the tracking=server option, the one-line error of a server that
does not answer (before anything trains), the Optuna journal location, ``harness ui`` and ``harness table``.
"""
import json
import os
import socket
import time
import types
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from harness.core.errors import ConfigError
from harness.tables.runs import StoreError, load_runs
from harness.tables.ui import free_port, port_free, start_ui, stop_ui, ui_command, wait_healthy
from harness.track import Tracker

pytestmark = pytest.mark.xdist_group("ports")   # tests that pick a free TCP port run on one worker, so two never pick the same one (scripts/test.sh: -n 2 --dist loadgroup)

WRITERS = 8
STEPS = 250
EXPERIMENT = "cluster"


def _params(i: int) -> dict:
    return {"writer": i, "train": {"lr": 1e-3 * (i + 1), "betas": [0.9, 0.99]}, "method": {"name": f"m{i % 3}"}}


def _metrics(i: int, step: int) -> dict[str, float]:
    return {"loss": i + step / 1000, "lr": (i + 1) * step * 0.5}


def _write(uri: str, i: int, folder: str) -> str:
    """One job: a run with params, STEPS steps of two metrics, two artifacts; returns its run id."""
    tracker = Tracker(uri, EXPERIMENT)
    run_id = tracker.start_run(f"writer-{i}", tags={"writer": str(i)}, params=_params(i))
    for step in range(STEPS):
        tracker.log_metrics(run_id, _metrics(i, step), step=step)
    path = Path(folder) / f"samples-{i}.txt"
    path.write_text(f"samples of writer {i}\n")
    tracker.log_artifact(run_id, path, "samples")
    tracker.log_dict(run_id, {"writer": i}, "summary.json")
    tracker.end_run(run_id)
    return run_id


@pytest.fixture
def server(tmp_path):
    """A real tracking server on 127.0.0.1 for jobs (proxied artifacts); killed, port freed, on teardown."""
    uri = f"sqlite:///{tmp_path}/server/mlflow.db"
    port = free_port(5800)
    log = tmp_path / "server.log"
    proc, url = start_ui(uri, port, cluster=True, log=log)
    try:
        assert wait_healthy(url, proc, timeout_s=180), log.read_text()[-3000:]
        yield url, tmp_path / "server"
    finally:
        stop_ui(proc)
    assert proc.poll() is not None and _group_gone(proc.pid), "a worker of the server outlived it"
    assert port_free(port)


def _group_gone(pgid: int, timeout_s: float = 15.0) -> bool:
    """Whether no process of the group is left within ``timeout_s`` (orphans are reaped by init, not at once)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _status(url: str, host_header: str) -> int:
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
                                 headers={"Host": host_header})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_eight_concurrent_writers_through_one_server(server, tmp_path):
    from mlflow.tracking import MlflowClient

    url, store = server
    ctx = get_context("spawn")  # fresh interpreters, as separate jobs are
    with ProcessPoolExecutor(WRITERS, mp_context=ctx) as pool:
        run_ids = list(pool.map(_write, [url] * WRITERS, range(WRITERS), [str(tmp_path)] * WRITERS))
    assert len(set(run_ids)) == WRITERS

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    runs = {r.data.tags["writer"]: r for r in client.search_runs([exp.experiment_id], max_results=100)}
    assert sorted(runs) == sorted(str(i) for i in range(WRITERS))
    ends = [r.info.end_time for r in runs.values()]
    assert max(r.info.start_time for r in runs.values()) < min(ends), "the 8 runs were open at the same time"
    for i in range(WRITERS):
        run = runs[str(i)]
        assert run.info.run_id == run_ids[i] and run.info.status == "FINISHED"
        assert run.data.params == {"writer": str(i), "train.lr": str(1e-3 * (i + 1)), "train.betas": "[0.9, 0.99]",
                                   "method.name": f"m{i % 3}"}
        for key in ("loss", "lr"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == [(s, _metrics(i, s)[key]) for s in range(STEPS)], key
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"samples", "summary.json"}
        dl = tmp_path / f"download-{i}"
        dl.mkdir()
        got = Path(client.download_artifacts(run.info.run_id, f"samples/samples-{i}.txt", str(dl)))
        assert got.read_text() == f"samples of writer {i}\n"
        summary = Path(client.download_artifacts(run.info.run_id, "summary.json", str(dl)))
        assert json.loads(summary.read_text()) == {"writer": i}
    # uploaded through the server into the folder beside its store, not written by the jobs themselves
    assert len(list((store / "mlartifacts").rglob("samples-*.txt"))) == WRITERS

    # jobs name the server by this machine's name: accepted; any other Host header is refused
    port = url.rsplit(":", 1)[1]
    assert _status(url, f"{socket.gethostname()}:{port}") == 200
    assert _status(url, f"elsewhere.invalid:{port}") == 403
    # a tracker whose URI spells the host differently (127.1 is 127.0.0.1) gets a 403: one line, no retries
    with pytest.raises(ConfigError) as err:
        Tracker(f"http://127.1:{port}", EXPERIMENT)
    assert "tracking.uri" in err.value.one_line() and "403" in err.value.one_line()
    assert "--allowed-hosts" in err.value.one_line()

    # harness table reads the server like a store
    df = load_runs(url, experiment=EXPERIMENT, kind=None)
    assert len(df) == WRITERS and set(df["status"]) == {"FINISHED"}


def test_server_that_does_not_answer_is_one_line_in_seconds():
    port = free_port(5900)
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        Tracker(f"http://127.0.0.1:{port}")
    line = err.value.one_line()
    assert time.time() - t0 < 15, "MLflow's own client would retry for minutes"
    assert line.startswith(f"tracking.uri: no MLflow server answers at http://127.0.0.1:{port}")
    assert "harness ui" in line and "mlflow server" in line and "MLFLOW_TRACKING_URI" in line
    with pytest.raises(StoreError, match="no MLflow server answers"):  # harness table: the same check, its error
        load_runs(f"http://127.0.0.1:{port}")


def test_run_against_a_dead_server_fails_before_training(workdir, monkeypatch, capsys):
    from harness.cli import main

    port = free_port(5950)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    args = ["run", "experiment=gmm_mini", "tracking=server", "train.steps=5", "run.progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tracking.uri: no MLflow server answers") and "\n" not in err
    assert not (workdir / "units").exists(), "nothing was trained"


def test_tracking_server_option_reads_the_environment(workdir, monkeypatch):
    from harness.config import load

    assert load(["tracking=server"])["tracking"]["uri"] == "http://127.0.0.1:5000"  # harness ui's default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://login01:5000")
    assert load(["tracking=server"])["tracking"]["uri"] == "http://login01:5000"


@pytest.mark.parametrize("uri, says", [
    ("login01:5000", "'login01:5000' has no scheme; a tracking server is http://login01:5000"),
    ("http://:5000", "'http://:5000' names no host")])
def test_malformed_server_uri_is_one_line_naming_the_key(workdir, uri, says):
    from harness.config import load

    with pytest.raises(ConfigError) as err:
        load([f"tracking.uri={uri}"])
    assert err.value.one_line().startswith(f"tracking.uri: {says}")


def test_optuna_journal_falls_back_to_the_workdir_for_a_server():
    from harness.sweep.search_spec import storage_url

    spec = types.SimpleNamespace(optuna={}, name="s")
    on_server = {"tracking": {"uri": "http://login01:5000"}, "paths": {"workdir": "/scratch/w"}}
    assert storage_url(spec, on_server) == "journal:/scratch/w/optuna/s.journal"
    on_sqlite = {"tracking": {"uri": "sqlite:////data/mlflow.db"}, "paths": {"workdir": "/scratch/w"}}
    assert storage_url(spec, on_sqlite) == "journal:/data/optuna/s.journal"


def test_ui_refuses_a_server_uri_and_serves_jobs_through_itself(tmp_path):
    with pytest.raises(StoreError, match="is a tracking server already; open it in a browser"):
        start_ui("http://127.0.0.1:5000", free_port(5600))
    local = ui_command(f"sqlite:///{tmp_path}/mlflow.db", 5123)
    assert "--serve-artifacts" not in local and "--allowed-hosts" not in local
    cmd = ui_command(f"sqlite:///{tmp_path}/mlflow.db", 5123, "0.0.0.0", cluster=True)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and "--default-artifact-root" not in cmd
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert {"localhost:*", "127.0.0.1:*", "10.*", socket.gethostname(), f"{socket.getfqdn()}:*"} <= set(hosts)
