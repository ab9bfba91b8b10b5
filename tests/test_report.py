"""Reproduction reports (issue 15, one results path): a sweep file's ``report:`` spec rendered by
``harness table --report`` from its committed results file alone, and a reported sweep resuming on a
fresh machine from that file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.core.errors import ConfigError
from harness.core.versions import PROTOCOL_VERSION
from harness.sweep.results import read_results, write_results
from harness.tables.report import Report, write_report

ROOT = Path(__file__).resolve().parents[1]
PROTO = {"extractor": "raw", "weights_sha256": "none", "reference_hash": "abc", "n_samples": 200,
         "sampler": "{\"name\": \"euler\", \"steps\": 5}", "nfe": 5, "protocol_version": PROTOCOL_VERSION,
         "reference_n": 200, "seeds": "0..199"}


def _spec(tmp: Path, **report) -> Path:
    rep = {"out": str(tmp / "out" / "rep"), "results": str(tmp / "cells.json"), "title": "t", "rows": "method.name",
           "pair_by": "train.seed", "metrics": ["fd_raw"], "differences": [["cbs", "naive_split"]], **report}
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps({"name": "s", "base": ["experiment=gmm_mini"], "report": rep}))   # JSON is YAML
    return path


def _cells(values: dict[str, list[float]], proto=PROTO, metric="fd_raw_200") -> dict[str, dict]:
    return {f"{m}{s}": {"keys": {"method.name": m, "train.seed": s}, "metrics": {metric: v}, "protocol": dict(proto),
                        "cost": {}, "method": {}, "seconds": 1.0}
            for m, vs in values.items() for s, v in enumerate(vs)}


def test_paired_difference_and_interval_are_those_of_the_per_seed_differences(tmp_path):
    naive, cbs = [0.50, 0.61, 0.47, 0.58], [0.41, 0.60, 0.40, 0.49]
    write_results(tmp_path / "cells.json", "s", [], _cells({"naive_split": naive, "cbs": cbs}))
    text = Report(_spec(tmp_path)).render()
    d = np.subtract(cbs, naive)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    row = next(line for line in text.splitlines() if line.startswith("| cbs − naive_split"))
    assert f"{d.mean():+.4g} ± {half:.2g}" in row
    assert f"({100 * d.mean() / np.mean(naive):+.1f} %)" in row
    assert row.rstrip(" |").endswith("4/4")                          # cbs lower on every seed
    mean, hw = np.mean(naive), stats.t.ppf(0.975, 3) * np.std(naive, ddof=1) / 2
    assert f"| naive_split | 4 | {mean:.4g} ± {hw:.4g} |" in text


def test_rendering_is_byte_for_byte_repeatable_and_writes_md_and_png(tmp_path):
    write_results(tmp_path / "cells.json", "s", ["experiment=gmm_mini"], _cells({"naive_split": [1, 2, 3], "cbs": [1, 1.5, 2.5]}))
    spec = _spec(tmp_path, plot={"x": "method.name"})
    first = [p.read_bytes() for p in write_report(spec)]
    second = [p.read_bytes() for p in write_report(spec)]
    assert first == second and len(first) == 2 and first[1][:8] == b"\x89PNG\r\n\x1a\n"


def test_a_grouped_report_plots_one_panel_per_group_and_never_pools_the_groups(tmp_path):
    """Cells of different groups are different models (guidance_fmnist: routing-trained vs dense twin):
    each panel's points are its own group's seed means, not a mean over both groups."""
    cells = {}
    for gamma, shift in ((0.0, 0.0), (0.5, 10.0)):
        for m, scale, vs in (("cfg_w1.5", 1.5, [1.0, 2.0]), ("cfg_w2.5", 2.5, [3.0, 5.0])):
            for s, v in enumerate(vs):
                cells[f"{m}{gamma}{s}"] = {"keys": {"method.name": m, "gamma": gamma, "scale": scale, "train.seed": s},
                                           "metrics": {"fd_raw_200": v + shift}, "protocol": dict(PROTO), "cost": {},
                                           "method": {}, "seconds": 1.0}
    write_results(tmp_path / "cells.json", "s", [], cells)
    rep = Report(_spec(tmp_path, group=["gamma"], differences=[], plot={"x": "scale", "series": {"cfg_w1.5": "CFG", "cfg_w2.5": "CFG"}}))
    fig = rep.figure()
    assert len(fig.axes) == 2
    for ax, shift in zip(fig.axes, (0.0, 10.0)):
        (line,) = [c.lines[0] for c in ax.containers]   # the one errorbar series: CFG over omega
        assert list(line.get_xdata()) == [1.5, 2.5]
        assert list(line.get_ydata()) == [1.5 + shift, 4.0 + shift]


def test_an_interaction_is_the_per_seed_difference_of_the_two_groups_paired_differences(tmp_path):
    """Seed 004's premise as one number: (cfg − none on the routing model) − (cfg − none on the dense twin),
    per seed, absolute and relative to each group's own baseline; pairs only seeds present in all four cells."""
    fd = {(0.5, "none"): [10.0, 12.0, 11.0], (0.5, "cfg"): [9.8, 12.1, 10.5],
          (0.0, "none"): [8.0, 9.0, 8.5], (0.0, "cfg"): [7.0, 8.4, 7.9, 7.7]}   # the dense cfg has a 4th seed
    cells = {f"{m}{g}{s}": {"keys": {"method.name": m, "gamma": g, "train.seed": s}, "metrics": {"fd_raw_200": v},
                            "protocol": dict(PROTO), "cost": {}, "method": {}, "seconds": 1.0}
             for (g, m), vs in fd.items() for s, v in enumerate(vs)}
    write_results(tmp_path / "cells.json", "s", [], cells)
    rep = Report(_spec(tmp_path, group=["gamma"], differences=[["cfg", "none"]],
                       interactions=[{"difference": ["cfg", "none"], "groups": ["0.5", 0]}]))
    absolute, relative = rep.interaction(rep.rep["interactions"][0], "fd_raw_200")
    d_sparse = np.subtract(fd[(0.5, "cfg")], fd[(0.5, "none")])
    d_dense = np.subtract(fd[(0.0, "cfg")][:3], fd[(0.0, "none")])
    np.testing.assert_allclose(absolute, d_sparse - d_dense)
    np.testing.assert_allclose(relative, 100 * (d_sparse / fd[(0.5, "none")] - d_dense / fd[(0.0, "none")]))
    row = next(line for line in rep.render().splitlines() if line.startswith("| (cfg − none) at gamma = 0.5 − at gamma = 0"))
    x = d_sparse - d_dense
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert f"{x.mean():+.4g} ± {half:.2g}" in row and row.rstrip(" |").endswith(f"{int((x < 0).sum())}/3")
    with pytest.raises(ConfigError, match=r"sweep.yaml: report.interactions\[0\].groups: no cell has gamma=0.25"):
        Report(_spec(tmp_path, group=["gamma"], differences=[],
                     interactions=[{"difference": ["cfg", "none"], "groups": [0.5, 0.25]}]))
    with pytest.raises(ConfigError, match=r"report.interactions: needs group: and pair_by:"):
        Report(_spec(tmp_path, differences=[], interactions=[{"difference": ["cfg", "none"], "groups": [0.5, 0]}]))


def test_a_half_finished_reproduction_renders_with_its_unrun_rows_named(tmp_path):
    """A row the sweep file declares but no finished cell has yet reads "not run yet" (the report of a long
    reproduction is read while it runs); a row the sweep does not declare stays an error."""
    write_results(tmp_path / "cells.json", "s", [], _cells({"naive_split": [1.0, 2.0], "cbs": [0.5, 1.5]}))
    spec = _spec(tmp_path, differences=[["cbs", "naive_split"], ["cbs", "monolithic"]])
    raw = json.loads(spec.read_text())
    raw["list"] = [{"method.name": m} for m in ("naive_split", "cbs", "monolithic")]
    spec.write_text(json.dumps(raw))
    text = Report(spec).render()
    assert "rows of the sweep not run yet: monolithic" in text
    assert "| cbs − monolithic | not run yet (monolithic) | 0 | – |" in text
    assert "| cbs − naive_split | -0.5 ± 0 (-33.3 %) | 2 | 2/2 |" in text
    raw["report"]["differences"] = [["cbs", "ddm"]]
    spec.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"report.differences: no cell has method.name=ddm"):
        Report(spec)


def test_cells_under_different_extractor_weights_are_refused(tmp_path):
    cells = _cells({"naive_split": [1, 2], "cbs": [1, 2]})
    cells["cbs1"]["protocol"]["weights_sha256"] = "other"
    write_results(tmp_path / "cells.json", "s", [], cells)
    with pytest.raises(ConfigError, match=r"cells.json: protocol.weights_sha256 differs between cells") as err:
        Report(_spec(tmp_path))
    assert "harness/evaluate/weights/" in err.value.hint     # says where the weights that do not vary ship


def test_bad_specs_and_files_are_one_line_errors_naming_file_and_key(tmp_path):
    write_results(tmp_path / "cells.json", "s", [], _cells({"naive_split": [1, 2], "cbs": [1, 2]}))
    with pytest.raises(ConfigError, match=r"sweep.yaml: report.columns.width: no cell has key 'backbone.width'"):
        Report(_spec(tmp_path, columns={"width": "backbone.width"}))
    with pytest.raises(ConfigError, match=r"cell method.name=cbs train.seed=0: metric 'nll_true' missing"):
        Report(_spec(tmp_path, metrics=["nll_true"]))
    with pytest.raises(ConfigError, match=r"report.differences: no cell has method.name=ddm"):
        Report(_spec(tmp_path, differences=[["ddm", "cbs"]]))
    raw = json.loads((tmp_path / "cells.json").read_text())
    (tmp_path / "cells.json").write_text(json.dumps(dict(raw, protocol_version="0")))
    with pytest.raises(ConfigError, match=r"cells.json: protocol_version: '0', this harness scores with protocol"):
        read_results(tmp_path / "cells.json")


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "sweeps" / "repro").glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_reports_regenerate_byte_for_byte(sweep_file, monkeypatch):
    from harness.sweep.spec import read_spec

    monkeypatch.chdir(ROOT)
    rep = read_spec(sweep_file.relative_to(ROOT)).report
    results, md = Path(str(rep["results"])), Path(str(rep["out"])).with_suffix(".md")
    if not results.exists() and not md.exists():
        pytest.skip(f"{sweep_file.name}: not run yet (no {results}, no {md})")
    report = Report(sweep_file.relative_to(ROOT))   # a results file without its report (or the reverse) fails here
    assert md.read_text() == report.render(), f"re-render {md} with: harness table --report {sweep_file.relative_to(ROOT)}"


def test_a_reported_sweep_resumes_on_a_fresh_machine_from_its_results_file(tmp_path, monkeypatch):
    from harness.sweep.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path / "machine1"))
    spec = {"name": "tiny_report", "base": ["experiment=gmm_mini", "train.steps=20", "eval.n_samples=200",
                                            "eval.reference_n=200", "sampler.steps=4", "backbone.width=16",
                                            "backbone.depth=1", "run.progress=false", "eval.metrics=[fd,velocity_error]"],
            "list": [{"method": "monolithic"}, {"method": "naive_split", "method.n": 2}], "grid": {"train.seed": [0, 1]},
            "report": {"out": "results/reproduced/tiny", "rows": "method.name", "pair_by": "train.seed",
                       "metrics": ["velocity_mse_exact", "fd_raw"], "differences": [["naive_split", "monolithic"]]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(spec))
    first = run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert {r["state"] for r in first["summary"]["rows"]} == {"finished"}
    exported = read_results(tmp_path / "results" / "cells" / "tiny_report.json")
    assert set(exported) == {c.id for c in first["sweep"].cells}
    report = Report(path).render()

    # a fresh machine: another workdir, nothing trained; only the committed results file travels
    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path / "machine2"))
    shutil.rmtree(tmp_path / "machine1")
    # its dry run shows the plan the real run makes (nothing to run) and writes no state
    dry = run_sweep(path, launcher="debug", dry_run=True, echo=lambda *a: None)
    assert dry["stages"] == [] and set(dry["before"].values()) == {"finished"}
    assert not (tmp_path / "machine2" / "sweeps").exists()
    # with one cell dropped from the file, the dry run plans exactly that cell
    dropped = sorted(exported)[0]
    one_less = {k: v for k, v in exported.items() if k != dropped}
    write_results(tmp_path / "one_less.json", "tiny_report", spec["base"], one_less)
    spec2 = dict(spec, report=dict(spec["report"], results=str(tmp_path / "one_less.json")))
    (tmp_path / "tiny2.yaml").write_text(json.dumps(spec2))
    dry2 = run_sweep(tmp_path / "tiny2.yaml", launcher="debug", dry_run=True, echo=lambda *a: None)
    planned = [t.cell_id for st in dry2["stages"] if st.name == "evaluate" for t in st.tasks]
    assert planned == [dropped]
    # cells recorded under other extractor weights than this machine's: the new cell could never join them, so
    # the run (and its dry run) stops before anything is trained or written, naming the file and both hashes
    other = {k: dict(v, protocol=dict(v["protocol"], weights_sha256="0ther" * 8)) for k, v in one_less.items()}
    write_results(tmp_path / "other.json", "tiny_report", spec["base"], other)
    spec3 = dict(spec, report=dict(spec["report"], results=str(tmp_path / "other.json")))
    (tmp_path / "tiny3.yaml").write_text(json.dumps(spec3))
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=r"other.json: its cells were scored under raw weights 0ther0ther0ther0, "
                                              r"this machine's eval.extractor has none") as err:
            run_sweep(tmp_path / "tiny3.yaml", launcher="debug", dry_run=dry_run, echo=lambda *a: None)
        assert dropped in str(err.value)
        assert not (tmp_path / "machine2" / "sweeps").exists() and not (tmp_path / "machine2" / "units").exists()
    second = run_sweep(path, launcher="debug", echo=lambda *a: None)
    assert second["stages"] == []                                    # nothing to run: every cell was imported
    assert not (tmp_path / "machine2" / "units").exists()
    assert Report(path).render() == report                           # the same report, byte for byte


def test_per_t_curve_differences_are_the_per_seed_differences_at_each_t(tmp_path):
    rng = np.random.default_rng(0)
    curves = {(m, s): rng.normal(size=4).round(4).tolist() for m in ("naive_split", "cbs") for s in range(3)}
    cells = _cells({"naive_split": [1, 2, 3], "cbs": [1, 1.5, 2.5]})
    for c in cells.values():
        c["protocol"]["heldout_fm_per_t"] = curves[(c["keys"]["method.name"], c["keys"]["train.seed"])]
        c["method"] = {"boundaries": [0.4, 0.77] if c["keys"]["method.name"] == "cbs" else [1 / 3, 2 / 3]}
    write_results(tmp_path / "cells.json", "s", [], cells)
    spec = _spec(tmp_path, curve={"protocol": "heldout_fm_per_t", "differences": [["cbs", "naive_split"]]})
    text = Report(spec).render()
    row = next(line for line in text.splitlines() if line.startswith("| cbs − naive_split | 3 | ")).strip(" |").split(" | ")
    assert [r.split(" ± ")[0] for r in row[2:]] == [
        f"{np.mean([curves['cbs', s][k] - curves['naive_split', s][k] for s in range(3)]):+.3g}" for k in range(4)]
    assert "| paired difference | pairs | t=0.125 | t=0.375 | t=0.625 | t=0.875 |" in text   # midpoints of 4 bins
    made = write_report(spec)
    assert [p.name for p in made] == ["rep.md", "rep_curve.png"] and made[1].read_bytes()[:4] == b"\x89PNG"

    del cells["cbs1"]["protocol"]["heldout_fm_per_t"]
    write_results(tmp_path / "cells.json", "s", [], cells)
    with pytest.raises(ConfigError, match=r"cells.json: cell method.name=cbs train.seed=1: protocol.heldout_fm_per_t missing"):
        Report(spec)
    with pytest.raises(ConfigError, match=r"report.curve: expected \{protocol"):
        Report(_spec(tmp_path, curve={"protocol": "heldout_fm_per_t"}))
