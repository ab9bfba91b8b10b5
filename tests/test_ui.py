"""`harness ui`: the MLflow UI on 127.0.0.1 over the project's store, seen by a real headless Chromium."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from harness.tables.runs import StoreError
from harness.tables.ui import HOST, free_port, port_free, start_ui, ui_command

HARNESS = str(Path(sys.executable).with_name("harness"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_port_in_use_is_one_line_with_a_free_port_to_try(tmp_path):
    from harness.track import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(uri, "harness")
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not port_free(busy)
        with pytest.raises(HarnessError) as err:
            start_ui(uri, busy)
    line = err.value.one_line()
    assert f"port {busy}" in line and "already in use" in line
    suggested = int(re.search(r"try --port (\d+)", line).group(1))
    assert suggested != busy and port_free(suggested)


def test_missing_store_is_reported_before_anything_starts(tmp_path):
    with pytest.raises(StoreError, match="no MLflow store at"):
        start_ui(f"sqlite:///{tmp_path}/absent.db", free_port(5600))
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store


def test_ui_binds_localhost_only_and_serves_artifacts_beside_the_store(tmp_path):
    cmd = ui_command(f"sqlite:///{tmp_path}/mlflow.db", 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()


def _dom(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the JS app rendered (virtual time lets its requests finish), optionally a screenshot."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=12000"]
    if screenshot is not None:
        out = subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs chromium + chromium-driver)")
def test_browser_lists_the_experiment_and_its_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.mini_store import make_mini_store, store_overrides

    ids = make_mini_store(tmp_path, runs=(["method=monolithic", "train.seed=0", "run.name=ui-mono"],
                                          ["method=naive_split", "method.n=2", "train.seed=0", "run.name=ui-naive"]))
    exp_id = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("harness").experiment_id
    port = free_port(5700)
    proc = subprocess.Popen([HARNESS, "ui", "--port", str(port), *store_overrides(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "MLflow UI:" in line or proc.poll() is not None:
                break
        url = f"http://127.0.0.1:{port}"
        runs_url = f"{url}/#/experiments/{exp_id}/runs"
        assert f"MLflow UI: {url}" in "".join(lines), "".join(lines)
        assert proc.stdout.readline().strip() == f"runs of 'harness': {runs_url}"
        dom = ""
        for _ in range(5):  # the UI is a JS app: poll until the runs table has rendered
            dom = _dom(runs_url, tmp_path / "chrome")
            if "ui-mono" in dom and "ui-naive" in dom:
                break
            time.sleep(3)
        assert "harness" in dom and "ui-mono" in dom and "ui-naive" in dom, dom[-3000:]
        shot = tmp_path / "mlflow_ui_runs.png"
        _dom(runs_url, tmp_path / "chrome", screenshot=shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        if os.environ.get("HARNESS_TEST_ARTIFACTS"):
            shutil.copy(shot, Path(os.environ["HARNESS_TEST_ARTIFACTS"]) / shot.name)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the server's process group stops, exit code 0
        assert proc.wait(timeout=60) == 0
        assert "stopping the MLflow UI" in proc.stdout.read()
        assert port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(ids["monolithic"]) == len(ids["naive_split"]) == 1
