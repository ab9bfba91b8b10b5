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

pytestmark = pytest.mark.xdist_group("ports")   # tests that pick a free TCP port run on one worker, so two never pick the same one (scripts/test.sh: -n 2 --dist loadgroup)

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
        printed = proc.stdout.readline().strip()
        assert printed.startswith(f"runs of 'harness': {runs_url}?viewStateShareKey="), printed
        runs_url = printed.split(": ", 1)[1]
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        values = {client.get_run(r).data.metrics[metric] for r in ids["monolithic"] + ids["naive_split"]
                  for metric in [next(k for k in client.get_run(r).data.metrics if k.startswith("fd_raw_"))]}
        metric = next(k for k in client.get_run(ids["monolithic"][0]).data.metrics if k.startswith("fd_raw_"))
        header = re.compile(r'role="columnheader"[^>]*col-id="metrics\.`' + metric + r'`"[^>]*style="left: (\d+)px')
        dom = ""
        for _ in range(5):  # the UI is a JS app: poll until the runs table has rendered
            dom = _dom(runs_url, tmp_path / "chrome")
            if "ui-mono" in dom and "ui-naive" in dom and header.search(dom):
                break
            time.sleep(3)
        assert "harness" in dom and "ui-mono" in dom and "ui-naive" in dom, dom[-3000:]
        # the metric is a column of the first screen (a header cell left of the 1400-pixel window's edge) ...
        left = header.search(dom)
        assert left and int(left.group(1)) < 1000, dom[-3000:]
        # ... whose cells hold each run's value, the runs grouped under their sweep's tag
        cells = re.findall(r'role="gridcell" col-id="metrics\.`' + metric + r'`"[^>]*>(?:<[^>]+>)*\s*([0-9.e+-]+)', dom)
        shown = [float(c) for c in cells]
        assert all(any(abs(v - c) < 1e-9 for c in shown) for v in values), (values, shown)
        assert "mini_sweep" in dom
        assert f'col-id="params.`method.n`"' in dom                # a varied key is a column too
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


def test_runs_view_shows_each_sweeps_metric_and_varied_keys_grouped_by_sweep():
    import pandas as pd

    from harness.tables.ui import runs_view

    def run(kind, sweep, n=None, fd=None, cnn=None, t=0):
        return {"run_id": f"r{t}", "start_time": t, "tags.harness.kind": kind, "tags.harness.sweep": sweep,
                "params.method.n": n, "params.train.seed": "0", "params.run.name": f"x{t}",
                "metrics.fd_raw_100": fd, "metrics.fd_cnn_fashion_mnist_1k": cnn, "metrics.gflops_per_image": 1.0,
                "tags.harness.sweep_metric": "fd_raw" if kind == "sweep" and sweep == "b" else None}

    runs = pd.DataFrame([run("sweep", "a", t=1), run("experiment", "a", "2", 1.0, 9.0, 2), run("experiment", "a", "3", 2.0, 8.0, 3),
                         run("sweep", "b", t=4), run("experiment", "b", "2", 1.5, 7.0, 5), run("unit", None, t=6)])
    view = runs_view(runs)
    cols = view["selectedColumns"]
    # sweep a names no metric: the quality metric (the trained CNN's FD before raw coordinates); b: its file's (fd_raw)
    assert cols[:3] == ["metrics.`fd_raw_100`", "metrics.`fd_cnn_fashion_mnist_1k`", "metrics.`gflops_per_image`"]
    assert "params.`method.n`" in cols and "params.`run.name`" not in cols
    assert view["searchFilter"] == "tags.`harness.kind` = 'experiment'"
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "harness.sweep"}]
    assert runs_view(runs[runs["tags.harness.kind"] != "experiment"]) is None
