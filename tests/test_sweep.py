"""Sweeps: cell ids, sweep-file validation, unit reuse in boundary perturbation, resume after a kill."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.errors import ConfigError
from harness.sweep import state
from harness.sweep.load import load_sweep
from harness.sweep.runner import plan, run_sweep
from harness.sweep.spec import NON_RESULT_NODES, cell_id, result_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=gmm_mini", "train.steps=10", "train.batch_size=32", "backbone.width=32", "backbone.depth=1",
        "eval.n_samples=100", "eval.reference_n=100", "sampler.steps=5", "split.trajectories=32", "split.grid=20",
        "run.progress=false"]


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def base_yaml(extra: list[str] = ()) -> str:
    return "base:\n" + "".join(f"  - {o}\n" for o in [*TINY, *extra])


def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "_x"
    if isinstance(v, list):
        return [*v, 0]
    if v is None:
        return 1
    if isinstance(v, dict):
        return {"x": 1}
    raise AssertionError(f"no change rule for {v!r}")


def _set(d, path, value):
    d = json.loads(json.dumps(d))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


def test_cell_id_is_stable_and_changes_with_every_result_key(workdir):
    from harness.config import load

    cfg = load([*TINY, "method=cbs", "method.n=3", "method.boundaries=[0.3,0.6]"])
    again = load([*TINY, "method=cbs", "method.n=3", "method.boundaries=[0.3,0.6]"])
    assert cell_id(cfg) == cell_id(again)
    # a fresh process (another machine, a SLURM job) computes the same id
    code = ("import json,sys; from harness.sweep.spec import cell_id; "
            "print(cell_id(json.loads(sys.stdin.read())))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cfg), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == cell_id(cfg)
    leaves = list(_leaves(result_config(cfg)))
    assert len(leaves) > 40  # data, backbone, objective, method, sampler, eval, train, split keys
    for path, value in leaves:
        assert cell_id(_set(cfg, path, _changed(value))) != cell_id(cfg), f"cell id ignores {'.'.join(path)}"


def test_cell_id_ignores_keys_that_cannot_change_a_result(workdir):
    from harness.config import load

    cfg = load(TINY)
    assert set(NON_RESULT_NODES) <= set(cfg)
    for path, value in _leaves({k: cfg[k] for k in NON_RESULT_NODES}):
        assert cell_id(_set(cfg, path, _changed(value))) == cell_id(cfg), ".".join(path)
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        assert cell_id(_set(cfg, ("train", key), cfg["train"][key] + 7)) == cell_id(cfg)


def test_grid_crossed_with_list_gives_validated_hydra_cells(workdir, tmp_path):
    path = write_sweep(tmp_path / "g.yaml", base_yaml() + """
grid:
  train.seed: [0, 1]
list:
  - [method=naive_split, method.n=3]
  - {method: monolithic}
  - [method=monolithic]   # the same cell as the line above: kept once
""")
    sweep = load_sweep(path)
    assert len(sweep.cells) == 4
    got = sorted((c.cfg["method"]["name"], c.cfg["method"].get("n"), c.cfg["train"]["seed"]) for c in sweep.cells)
    assert got == [("monolithic", None, 0), ("monolithic", None, 1), ("naive_split", 3, 0), ("naive_split", 3, 1)]
    assert sweep.dir == workdir / "sweeps" / "g"
    assert len({c.id for c in sweep.cells}) == 4


@pytest.mark.parametrize("body, message", [
    ("grid: {train.seed: [0]}\ngrdi: {}\n", r"g\.yaml: grdi: unknown sweep key\. Did you mean: grid\?"),
    ("grid: {}\n", r"g\.yaml: grid: empty"),
    ("grid: {train.seed: []}\n", r"g\.yaml: grid\.train\.seed: expected a non-empty list"),
    ("list:\n  - [train.stpes=3]\n", r"g\.yaml: cell train\.stpes=3: train\.stpes: unknown key"),
    ("list:\n  - [method.n=2, method=naive_split, method.bogus=1]\n", r"g\.yaml: cell .*method\.bogus: unknown key"),
    ("list:\n  - [not-an-override]\n", r"g\.yaml: list\[0\]: 'not-an-override' is not a KEY=VALUE"),
])
def test_bad_sweep_files_fail_in_one_line_naming_file_and_key_and_submit_nothing(workdir, tmp_path, body, message):
    path = write_sweep(tmp_path / "g.yaml", base_yaml() + body)
    with pytest.raises(ConfigError, match=message) as err:
        run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert "\n" not in err.value.one_line()
    assert not (workdir / "sweeps").exists()


def test_a_bad_cell_among_good_ones_stops_the_sweep_before_anything_runs(workdir, tmp_path):
    path = write_sweep(tmp_path / "g.yaml", base_yaml() + "list:\n  - [train.seed=1]\n  - [train.seed=2, eval.n_smaples=3]\n")
    with pytest.raises(ConfigError, match="eval.n_smaples: unknown key"):
        run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert not workdir.exists() or not any(workdir.rglob("done.json"))


def test_unknown_slurm_profile_is_a_config_error(workdir, tmp_path):
    path = write_sweep(tmp_path / "g.yaml", base_yaml(["launcher=slurm", "launcher.profile=nonexistent_cluster"])
                       + "grid: {train.seed: [0]}\n")
    with pytest.raises(ConfigError, match="launcher.profile: SLURM profile 'nonexistent_cluster' does not exist"):
        run_sweep(path, dry_run=True, echo=lambda *a: None)


SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml")) + sorted((REPO / "sweeps" / "repro").glob("*.yaml"))


def test_the_repo_has_the_issue_sweep_files():
    assert {"boundary_perturb.yaml", "split_search.yaml"} <= {f.name for f in SWEEP_FILES}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[f.stem for f in SWEEP_FILES])
def test_every_sweep_file_in_the_repo_validates_every_cell(workdir, path):
    """What `harness sweep FILE --dry-run` checks, for every file in sweeps/ (derivers train nothing)."""
    sweep = load_sweep(path, dry_run=True)
    assert sweep.cells or sweep.spec.optuna, f"{path.name}: no cells"


@pytest.mark.slow
def test_boundary_perturbation_reuses_the_experts_whose_interval_did_not_move(workdir, tmp_path):
    """seed 000 Table 5 protocol on the analytic mixture: N = 3, each boundary moved by +0.05.

    Base cell: 3 experts.  Moving b1 changes experts 0 and 1 (expert 2 reused); moving b2 changes
    experts 1 and 2 (expert 0 reused): 9 unit slots, 7 units trained, 2 reused.
    """
    path = write_sweep(tmp_path / "bp.yaml", base_yaml(["method=cbs", "method.n=3", "split.field=exact"]) + """
derive: {name: cbs_boundary_perturb, deltas: [0.05]}
plot: {x: delta, hue: boundary}
""")
    lines: list[str] = []
    out = run_sweep(path, launcher="debug", echo=lambda *a: lines.append(" ".join(map(str, a))))
    summary = out["summary"]
    assert [r["state"] for r in summary["rows"]] == ["finished"] * 3
    assert summary["units"] == {"slots": 9, "trained": 7, "reused": 2}
    assert len(list((workdir / "units").glob("*/done.json"))) == 7
    assert any("units: 7 trained, 2 reused of 9 unit slots" in line for line in lines)
    base, b1, b2 = summary["rows"]
    assert base["delta"]["boundary"] == "-" and b1["delta"]["boundary"] == "b1" and b2["delta"]["boundary"] == "b2"
    assert base["units"]["expert2"] == b1["units"]["expert2"] and base["units"]["expert0"] == b2["units"]["expert0"]
    assert base["units"]["expert1"] not in (b1["units"]["expert1"], b2["units"]["expert1"])
    assert all(r["value"] is not None and r["metric"].startswith("fd_raw_") for r in summary["rows"])
    assert Path(summary["png"]).stat().st_size > 1000
    # the re-run skips every finished cell and trains nothing
    again = run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert again["stages"] == [] and set(again["before"].values()) == {"finished"}
    # the MLflow records: each cell's run is a child of the sweep's run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    sweep_run = json.loads((workdir / "sweeps" / "bp" / "mlflow_run.json").read_text())["run_id"]
    for r in summary["rows"]:
        run = client.get_run(r["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == sweep_run
        assert run.data.tags["harness.cell_id"] == r["id"]


def test_a_failed_cell_is_recorded_and_rerun_only_when_asked(workdir, tmp_path):
    # split.field=exact validates but fails at run time on data without a closed-form field
    path = write_sweep(tmp_path / "f.yaml", base_yaml(["data=digits", "backbone=mlp_tiny", "method=cbs", "method.n=2",
                                                       "split.field=exact", "eval=none"]) + "grid: {train.seed: [0]}\n")
    with pytest.raises(ConfigError, match="split.field=exact needs data with a closed-form velocity"):
        run_sweep(path, launcher="debug", echo=lambda *a: None)
    sweep = load_sweep(path)
    (cell,) = sweep.cells
    assert state.cell_state(sweep.dir, cell.id) == "failed"
    assert state.failure(sweep.dir, cell.id)["stage"] == "prepare"
    stages, before = plan(sweep)
    assert stages == [] and before == {cell.id: "failed"}
    stages, _ = plan(sweep, rerun_failed=True)
    assert [s.name for s in stages] == ["prepare", "units", "evaluate"]


@pytest.mark.slow
def test_a_killed_local_sweep_resumes_and_runs_only_the_unfinished_cells(workdir, tmp_path):
    path = write_sweep(tmp_path / "k.yaml", base_yaml() + "grid: {train.seed: [0, 1, 2]}\n")
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--launcher", "local", "--max-parallel", "1"]
    sweep = load_sweep(path)
    results = [state.cell_dir(sweep.dir, c.id) / "result.json" for c in sweep.cells]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not any(p.exists() for p in results) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)   # the driver and its submitit subprocesses, like a lost terminal
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in results if p.exists()}
    assert 1 <= len(finished) < 3
    stages, before = plan(load_sweep(path))
    evaluate = next(s for s in stages if s.name == "evaluate")
    assert {t.cell_id for t in evaluate.tasks} == {c.id for c, p in zip(sweep.cells, results) if p not in finished}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert all(p.exists() for p in results)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished cells were not re-run
    assert "3 finished" in done.stdout


SEARCH = """
optuna:
  metric: fd
  direction: minimize
  n_trials: {n}
  sampler: random
  seed: 0
  reference: true
  space:
    method.boundaries: {{type: ordered, n: 2, low: 0.0, high: 1.0}}
"""


def _study(sweep):
    from harness.sweep.search import study

    return study(sweep.spec, sweep.base_cfg)


@pytest.mark.slow
def test_optuna_search_runs_trials_as_child_runs_and_ranks_the_reference(workdir, tmp_path, capsys):
    import optuna
    from mlflow.tracking import MlflowClient

    from harness.cli import main

    path = write_sweep(tmp_path / "s.yaml", base_yaml(["method=cbs", "method.n=3", "split.field=exact"]) + SEARCH.format(n=2))
    assert main(["sweep", str(path), "--launcher", "debug"]) == 0        # through the CLI, as users run it
    lines = capsys.readouterr().out.splitlines()
    assert "search s: 2 complete" in lines
    for n in (0, 1):                                                     # the search's event lines (not a terminal)
        assert any(line.startswith(f"trial #{n} started: method.boundaries[0]=") for line in lines)
        assert any(re.match(rf"trial #{n} complete: \S+ \(best #[01]: \S+\); ", line) for line in lines)
    assert any(re.fullmatch(r"reference \(base config\) fd_raw_100 = \S+: [0-2] of 2 completed trials score better", line)
               for line in lines)
    trials = _study(load_sweep(path)).get_trials()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    sweep_run = json.loads((workdir / "sweeps" / "s" / "mlflow_run.json").read_text())["run_id"]
    for t in trials:
        b = [t.params["method.boundaries[0]"], t.params["method.boundaries[1]"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and 0 < b[0] < 1 and 0 < b[1] < 1
        run = client.get_run(t.user_attrs["run_id"])
        assert run.data.tags["harness.optuna_trial"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == sweep_run
        assert run.data.metrics["fd_raw_100"] == pytest.approx(t.value)
    assert (workdir / "optuna" / "s.journal").exists()   # next to the MLflow store


def test_optuna_storage_that_cannot_be_opened_is_a_config_error(workdir, tmp_path):
    text = base_yaml(["method=cbs", "method.n=3", "split.field=exact"]) + SEARCH.format(n=2)
    path = write_sweep(tmp_path / "s.yaml", text.replace("  reference: true\n", "  storage: mysql://nobody@127.0.0.1:1/none\n"))
    with pytest.raises(ConfigError, match=r"s\.yaml: optuna\.storage: cannot open mysql://"):
        run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert not (workdir / "sweeps").exists()


@pytest.mark.slow
def test_optuna_journal_survives_a_worker_crash(workdir, tmp_path):
    import optuna

    path = write_sweep(tmp_path / "s.yaml", base_yaml(["method=cbs", "method.n=3", "split.field=exact"]) + SEARCH.format(n=3))
    sweep = load_sweep(path)
    _study(sweep)
    code = (f"from harness.sweep.search import search_worker; search_worker({str(path)!r}, {str(sweep.dir)!r}, None)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    S = optuna.trial.TrialState
    while time.time() < deadline and proc.poll() is None:
        trials = _study(sweep).get_trials()
        if any(t.state == S.COMPLETE for t in trials) and any(t.state == S.RUNNING for t in trials):
            break
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)   # the worker dies in the middle of a trial
    proc.wait()
    before = {t.number: (t.state, t.value) for t in _study(sweep).get_trials()}
    assert S.RUNNING in {s for s, _ in before.values()} and S.COMPLETE in {s for s, _ in before.values()}
    from harness.sweep.search import search_worker

    search_worker(str(path), str(sweep.dir), None)   # a new worker picks the study up
    after = {t.number: (t.state, t.value) for t in _study(sweep).get_trials()}
    for number, (st, value) in before.items():
        if st == S.COMPLETE:
            assert after[number] == (st, value)          # nothing the crashed worker finished is lost
        if st == S.RUNNING:
            assert after[number][0] == S.FAIL            # its unfinished trial is recorded as failed
    assert len(after) == 3 and sum(s == S.COMPLETE for s, _ in after.values()) == 3 - sum(
        s == S.RUNNING for s, _ in before.values())


def test_sweep_plan_has_every_unit_run_trains_including_autoguidances_weak_model(workdir, tmp_path):
    """Planning uses the same unit list as `harness run`: the AG weak model is a node of the DAG."""
    from harness.config import load
    from harness.pipeline.assemble import experiment_units, method_for

    extra = ["guidance=autoguidance", "guidance.weak_steps=5"]
    path = write_sweep(tmp_path / "ag.yaml", base_yaml(extra) + "grid: {train.seed: [0]}\n")
    sweep = load_sweep(path)
    stages, _ = plan(sweep)
    planned = {t.roles[0] for st in stages if st.name == "units" for t in st.tasks}
    cfg = load([*TINY, *extra])
    assert planned == set(experiment_units(cfg, method_for(cfg, prepare=False))) == {"model", "guidance/weak"}
