"""``harness ui``: the MLflow UI on 127.0.0.1 over the project's store (DESIGN.md, Commands users run).

Binds to localhost unless told otherwise; checks the port before starting (a port in use is one line
naming a free one); waits for ``/health`` (FINDINGS: 9–31 s here) before printing the URL; Ctrl-C or
SIGTERM stops the server's whole process group (its own session), and ``harness ui`` returns only once
no process of it is left, so no uvicorn worker is left behind and the port is free.  Bound to another
interface it is the tracking server of a cluster's jobs (README, Tracking on a cluster): see ``ui_command``.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from harness.core.errors import HarnessError
from harness.core.processes import processes
from harness.tables.runs import StoreError, check_store, sqlite_path
from harness.track.store import ensure_store, is_server

HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as uvicorn: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(start: int, host: str = HOST) -> int:
    """The first bindable port at or after ``start`` (for the 'try --port N' hint)."""
    for port in range(start, min(start + 200, 65535)):
        if port_free(port, host):
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server bound to ``host``."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ui_command(uri: str, port: int, host: str = HOST, *, cluster: bool = False) -> list[str]:
    """The ``mlflow ui`` command line: one worker, artifacts in ``mlartifacts/`` beside a SQLite store.

    By default the artifact root is that folder's ``file://`` URI: a local ``harness run`` logging to the
    ``sqlite:///`` URI itself writes there and the UI reads it.  ``cluster``: the server jobs on other
    machines log to, which may not see this machine's disk: artifacts are uploaded through the server
    (``--serve-artifacts``; new experiments get the root ``mlflow-artifacts:/``) into the same folder, and
    requests naming this machine are accepted (``--allowed-hosts``, unless MLFLOW_SERVER_ALLOWED_HOSTS
    is set; MLflow's default accepts localhost and private IPs only).
    """
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    db = sqlite_path(uri)
    artifacts = None if db is None else db.parent / "mlartifacts"
    if not cluster:
        return cmd + ([] if artifacts is None else ["--default-artifact-root", artifacts.as_uri()])
    cmd += ["--serve-artifacts"] + ([] if artifacts is None else ["--artifacts-destination", str(artifacts)])
    if not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        cmd += ["--allowed-hosts", ",".join(cluster_allowed_hosts())]
    return cmd


def cluster_allowed_hosts() -> list[str]:
    """MLflow's default Host headers plus this machine's names: jobs reach the server as http://<name>:<port>."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = sorted({socket.gethostname(), socket.getfqdn()} - {"localhost"})
    return get_default_allowed_hosts() + [h for name in names for h in (name, f"{name}:*")]


def jobs_uri(host: str, port: int) -> str:
    """The tracking URI other machines use for a server bound to ``host`` (this machine's name for 0.0.0.0)."""
    return f"http://{socket.gethostname() if host == '0.0.0.0' else host}:{port}"


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    """Poll ``url``/health until it answers OK, the server exits, or ``timeout_s`` passes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def start_ui(uri: str, port: int = DEFAULT_PORT, *, host: str = HOST, cluster: bool = False,
             log: Optional[Path] = None) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process group; (process, URL on this machine). Errors are one line.

    ``cluster`` (see ``ui_command``) also creates a missing store: a server for jobs starts empty.
    """
    if is_server(uri):
        raise StoreError(f"tracking.uri: {uri} is a tracking server already; open it in a browser",
                         hint="harness ui serves a database: pass tracking.uri=sqlite:////path/to/mlflow.db")
    if cluster:
        ensure_store(uri)
    else:
        check_store(uri)
    if not port_free(port, host):
        raise HarnessError(f"--port: port {port} on {host} is already in use",
                           hint=f"try --port {free_port(port + 1, host)}")
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    # MLflow 3's job runner (7 huey processes for GenAI jobs the harness never submits) slows start and stop
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(ui_command(uri, port, host, cluster=cluster), stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return proc, f"http://{HOST if host == '0.0.0.0' else host}:{port}"


def stop_ui(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop the server's process group: SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL.

    Returns once no process of the group runs, not when the ``mlflow`` process exits: the uvicorn
    worker it started holds the port and may outlive it by a moment.
    """
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _wait_group(proc, wait_s):
            break
    proc.poll()


def _wait_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the leader is reaped and no other process of its group runs; False on timeout.

    Both, because /proc shows a multi-threaded leader as a zombie while its other threads still exit (so
    its group looks empty before ``waitpid`` can reap it), and the workers may outlive the leader.
    """
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies, which hold no port, do not count (Linux /proc)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    return any(p.pgrp == pgid and p.state != "Z" for p in processes())


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[None]:
    """Set SIGINT and SIGTERM to ``handler`` inside the block (main thread only: elsewhere they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve(uri: str, port: int = DEFAULT_PORT, *, host: str = HOST, say: Callable[[str], None] = print,
          log: Optional[Path] = None, experiment: Optional[str] = None, open_browser: bool = False) -> int:
    """Start, wait until healthy, print the URL, then block until Ctrl-C or SIGTERM (exit 0) or the server dies.

    ``experiment``: an MLflow experiment name whose runs page is printed too (MLflow 3 opens an
    experiment on its GenAI overview; the runs page is where a sweep's runs are compared).
    ``host`` other than loopback: the cluster's tracking server (``ui_command``); the URI jobs use is printed.
    SIGTERM stops it as Ctrl-C does; while the server's group is being stopped further signals are
    ignored, so a second Ctrl-C cannot leave a worker holding the port.
    """
    cluster = not is_loopback(host)
    with _signals(signal.default_int_handler):   # SIGTERM raises KeyboardInterrupt too
        proc, url = start_ui(uri, port, host=host, cluster=cluster, log=log)
        try:
            return _watch(proc, url, uri, cluster=cluster, host=host, port=port, say=say, log=log,
                          experiment=experiment, open_browser=open_browser)
        except KeyboardInterrupt:
            say("stopping the MLflow UI")
            return 0
        finally:
            with _signals(signal.SIG_IGN):
                stop_ui(proc)


def _watch(proc: subprocess.Popen, url: str, uri: str, *, cluster: bool, host: str, port: int,
           say: Callable[[str], None], log: Optional[Path], experiment: Optional[str], open_browser: bool = False) -> int:
    """Wait until healthy, print where the UI is, then until the server exits: 0 if it was stopped, else 1."""
    say(f"starting the MLflow UI on {url} (store {uri}) ...")
    if not wait_healthy(url, proc):
        code = proc.poll()
        raise StoreError(f"the MLflow UI did not come up on {url}" + (f" (exit code {code})" if code is not None else ""),
                         hint=f"see {log}" if log else "run `mlflow ui` by hand to see its output")
    say(f"MLflow UI: {url}  (Ctrl-C stops it)")
    if cluster:
        say(f"jobs log here with: export MLFLOW_TRACKING_URI={jobs_uri(host, port)}")
    runs_page = _runs_page(uri, experiment)
    if runs_page:
        say(f"runs of {experiment!r}: {url}/{runs_page}")
    if open_browser:   # --open: this machine's browser on the runs page (nothing happens where there is none)
        import webbrowser

        webbrowser.open(f"{url}/{runs_page}" if runs_page else url)
    proc.wait()
    return 0 if proc.returncode in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def _runs_page(uri: str, experiment: Optional[str]) -> Optional[str]:
    """The runs page of the named experiment, opened on :func:`write_runs_view`'s view; None when it does not exist."""
    if not experiment:
        return None
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if exp is None:
        return None
    key = write_runs_view(uri, exp.experiment_id)
    return f"#/experiments/{exp.experiment_id}/runs" + (f"?{SHARE_PARAM}={key}" if key else "")


# MLflow's experiment page reads a shared view (its "Share" button) from the experiment tag
# mlflow.sharedViewState.<key> named by ?viewStateShareKey=<key>: search facets (searchFilter, orderByKey,
# orderByAsc) and UI state (selectedColumns as "metrics.`name`" / "params.`name`", groupBy) as plain JSON.
SHARE_PARAM = "viewStateShareKey"
SHARE_TAG = "mlflow.sharedViewState."
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"   # not the GenAI overview
MAX_PARAM_COLUMNS = 8


def runs_view(runs) -> Optional[dict[str, Any]]:
    """The view a reader compares cells in: experiment runs only, grouped by sweep, newest first, with each
    sweep's metric (its file's ``metric:``, else the quality metric), the cost and the keys its cells vary as
    columns.  None when the experiment has no experiment runs yet."""
    from harness.tables.compare import COST_METRICS, choose_metric, varying_params
    from harness.tables.runs import SWEEP_TAG

    kind = runs.get("tags.harness.kind")
    if kind is None:
        return None
    cells = runs[kind == "experiment"]
    if cells.empty:
        return None
    sweeps = runs[kind == "sweep"]
    sweep_col = f"tags.{SWEEP_TAG}"
    groups = []
    if sweep_col in cells and not sweeps.empty:
        for _, parent in sweeps.sort_values("start_time", ascending=False).iterrows():
            members = cells[cells[sweep_col] == parent[sweep_col]]
            if not members.empty:
                groups.append((members, parent.get("tags.harness.sweep_metric")))
    groups = groups or [(cells, None)]
    metrics, params = [], []
    for members, wanted in groups:
        metric = choose_metric(members, wanted if isinstance(wanted, str) else None)
        if metric:
            metrics.append(metric)
        params += [c[len("params."):] for c in varying_params(members)]
    metrics += [m for m in COST_METRICS[:1] if f"metrics.{m}" in cells and cells[f"metrics.{m}"].notna().any()]
    params = list(dict.fromkeys(params))[:MAX_PARAM_COLUMNS] + (["train.seed"] if "params.train.seed" in cells else [])
    columns = [f"metrics.`{m}`" for m in dict.fromkeys(metrics)] + [f"params.`{p}`" for p in dict.fromkeys(params)]
    view: dict[str, Any] = {"searchFilter": "tags.`harness.kind` = 'experiment'", "orderByKey": "attributes.start_time",
                            "orderByAsc": False, "selectedColumns": columns}
    if sweep_col in cells and cells[sweep_col].notna().any():
        # one group per sweep (expanded, the mean of each metric on its row); runs of no sweep in an expanded group too
        view["groupBy"] = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": SWEEP_TAG}]}
        view["groupsExpanded"] = {f"tag.{SWEEP_TAG}": True}
    return view


def write_runs_view(uri: str, experiment_id: str) -> Optional[str]:
    """Store :func:`runs_view` of the experiment as a shared MLflow view; its key (content hash), or None.

    Also marks the experiment a model-training one (``mlflow.experimentKind``), so MLflow shows its runs
    rather than its GenAI overview wherever it is opened.
    """
    import hashlib
    import json

    from mlflow.tracking import MlflowClient

    from harness.tables.runs import load_runs

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment(experiment_id)
    if KIND_TAG not in exp.tags:
        client.set_experiment_tag(experiment_id, KIND_TAG, TRAINING_KIND)
    view = runs_view(load_runs(uri, experiment=exp.name, kind=None))
    if view is None:
        return None
    text = json.dumps(view, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if exp.tags.get(SHARE_TAG + key) != text:
        client.set_experiment_tag(experiment_id, SHARE_TAG + key, text)
    return key
