"""``harness ui``: the MLflow UI on 127.0.0.1 over the project's store (DESIGN.md, Commands users run).

Binds to localhost only; checks the port before starting (a port in use is one line naming a free
one); waits for ``/health`` (FINDINGS: 9–31 s here) before printing the URL; Ctrl-C stops the
server's whole process group, so no gunicorn/uvicorn worker is left behind.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from harness.core.errors import HarnessError
from harness.tables.runs import StoreError, check_store, sqlite_path

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


def ui_command(uri: str, port: int, host: str = HOST) -> list[str]:
    """The ``mlflow ui`` command line: one worker, artifacts served from beside the SQLite store."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    db = sqlite_path(uri)
    if db is not None:
        cmd += ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    return cmd


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


def start_ui(uri: str, port: int = DEFAULT_PORT, *, log: Optional[Path] = None) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process group; (process, URL). Errors are one line."""
    check_store(uri)
    if not port_free(port):
        raise HarnessError(f"--port: port {port} on {HOST} is already in use", hint=f"try --port {free_port(port + 1)}")
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    proc = subprocess.Popen(ui_command(uri, port), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://{HOST}:{port}"


def stop_ui(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop the server's process group: SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(uri: str, port: int = DEFAULT_PORT, *, say: Callable[[str], None] = print, log: Optional[Path] = None,
          experiment: Optional[str] = None) -> int:
    """Start, wait until healthy, print the URL, then block until Ctrl-C (exit 0) or the server dies.

    ``experiment``: an MLflow experiment name whose runs page is printed too (MLflow 3 opens an
    experiment on its GenAI overview; the runs page is where a sweep's runs are compared).
    """
    proc, url = start_ui(uri, port, log=log)
    try:
        say(f"starting the MLflow UI on {url} (store {uri}) ...")
        if not wait_healthy(url, proc):
            code = proc.poll()
            stop_ui(proc)
            raise StoreError(f"the MLflow UI did not come up on {url}" + (f" (exit code {code})" if code is not None else ""),
                             hint=f"see {log}" if log else "run `mlflow ui` by hand to see its output")
        say(f"MLflow UI: {url}  (Ctrl-C stops it)")
        runs_page = _runs_page(uri, experiment)
        if runs_page:
            say(f"runs of {experiment!r}: {url}/{runs_page}")
        proc.wait()
        return 0 if proc.returncode in (0, -signal.SIGTERM, -signal.SIGINT) else 1
    except KeyboardInterrupt:
        say("stopping the MLflow UI")
        return 0
    finally:
        stop_ui(proc)


def _runs_page(uri: str, experiment: Optional[str]) -> Optional[str]:
    """'#/experiments/<id>/runs' of the named experiment, None when it does not exist."""
    if not experiment:
        return None
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    return None if exp is None else f"#/experiments/{exp.experiment_id}/runs"
