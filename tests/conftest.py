"""Fixtures shared by several test files (one definition each)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Units, caches and the default SQLite store of every config composed in the test live under tmp_path."""
    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path / "w"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "w"


# The first failures, one line each, as they happen: a CI log read from its head (or cut short) still says why.
_EARLY_FAILURES_SHOWN = 3
_early = {"config": None, "shown": 0}


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), not an xdist worker
        _early["config"] = config


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _early["config"]
    if config is None or not report.failed or _early["shown"] >= _EARLY_FAILURES_SHOWN:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    _early["shown"] += 1
    crash = getattr(report.longrepr, "reprcrash", None)
    why = f"{crash.path}:{crash.lineno}: {crash.message}" if crash is not None else str(report.longrepr).strip()
    why = " ".join(why.split())[:400]
    reporter.write_line(f"\n{report.when.upper()} FAILED {report.nodeid}: {why}")


# A passed test's tmp_path is deleted as soon as it ends (pytest would keep every one until the session ends, ~1.3 GB
# at the peak of a full run: a CI box with little free disk then fails every later test at setup).  A failed test's
# directory stays for reading.
_TMP = pytest.StashKey[Path]()
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    tmp = (getattr(item, "funcargs", None) or {}).get("tmp_path")
    if isinstance(tmp, Path):
        item.stash[_TMP] = tmp
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    tmp = item.stash.get(_TMP, None)
    if tmp is not None and not item.stash.get(_FAILED, False):
        shutil.rmtree(tmp, ignore_errors=True)
    return result
