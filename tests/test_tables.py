"""`harness table`: transcribed seed numbers (results/paper) beside our MLflow runs; md / LaTeX / CSV."""
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.core.errors import ConfigError
from harness.tables.compare import MISSING, match_mask, paper_vs_ours, runs_table
from harness.core.stats import ci95
from harness.tables.paper import load_paper_file, load_paper_tables
from harness.tables.render import to_latex, to_markdown

SEEDS = Path("/work/shared/seeds")
PAPER = load_paper_tables()


def _cells(line: str) -> list[str]:
    return [re.sub(r"</?u>|\*\*", "", c).strip() for c in line.split("\t")]


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed texts not present on this machine")
def test_every_transcribed_value_occurs_in_its_seed_line():
    entries = [e for t in PAPER for e in t.entries]
    assert len(entries) > 200
    for e in entries:
        text = (SEEDS / e.seed_file).read_text()
        assert e.value in text, f"{e.source}: {e.value!r} not in {e.seed_file}"
        line = text.splitlines()[e.seed_line - 1]
        if "\t" in line:  # a table body line: the value is one whole cell, the row label holds another cell
            cells = _cells(line)
            # a whole cell, or its leading number where the cell adds '± std' or a '(note)' (documented in the yaml)
            heads = {re.split(r" \\pm | \(", c)[0] for c in cells}
            assert e.value in cells or e.value in heads, f"{e.source}: {e.value!r} not a cell of {cells}"
            assert any(c and c in e.row for c in cells), f"{e.source}: row {e.row!r} shares no cell with {cells}"
        else:  # prose (seed 001 quotes): the value is a whole number token on that line
            assert re.search(rf"(?<![\d.]){re.escape(e.value)}(?![\d])", line), f"{e.source}: {e.value!r} not on line {e.seed_line}"


def test_paper_covers_the_issue_tables_and_seed000_bodies_are_marked_missing():
    ids = {t.id: t for t in PAPER}
    for tid in ("diffmoe_t2", "diffmoe_t3", "diffmoe_t4", "diffmoe_t5", "diffmoe_t8", "diffmoe_t10",
                "hddm_t1", "hddm_t2", "hddm_t3", "hddm_t4", "sg_t1", "sg_t2", "cbs_t1_quoted", "cbs_t4_quoted"):
        assert ids[tid].entries, tid
    for n in range(1, 8):
        t = ids[f"cbs_t{n}"]
        assert t.status == "body_missing" and not t.entries and "missing" in t.note
    if SEEDS.is_dir():  # the seed really has no table body: no tab-separated line anywhere in seed 000
        assert "\t" not in next(SEEDS.glob("000_*.txt")).read_text()
    # every entry states a protocol: metric and samples/sampler or an explicit 'not stated'
    for t in PAPER:
        for e in t.entries:
            assert e.protocol.get("metric") and ("sampler" in e.protocol or "nfe" in e.protocol), e.source


def test_malformed_entry_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed_file: 002_x.txt\ntables:\n  - id: t\n    table: Table 9\n    status: transcribed\n    entries:\n"
                   "      - {row: A, column: FID, metric: fid, value: '1.0', line: 3}\n"
                   "      - row: B\n        column: FID\n        metric: fid\n        line: 4\n")
    with pytest.raises(ConfigError) as err:
        load_paper_file(bad)
    assert "bad.yaml:8" in err.value.one_line() and "value" in err.value.one_line()
    bad.write_text("seed_file: x\ntables:\n  - id: t\n    table: T\n    status: transcribed\n    entries:\n"
                   "      - {row: A, column: FID, metric: fid, value: 1.0, line: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:7: entry 'value' must be str"):
        load_paper_file(bad)
    bad.write_text("seed_file: x\ntables: [ {id: t\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_paper_file(bad)


def test_cli_reports_malformed_paper_file_in_one_line(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("seed_file: s\ntables:\n  - id: t\n    table: T\n    status: done\n")
    rc = main(["table", "--paper", "--paper-dir", str(tmp_path), f"tracking.uri=sqlite:///{tmp_path}/none.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "x.yaml:3" in err and "status 'done'" in err and "Traceback" not in err


def _runs(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"run_id": [f"r{i}" for i in range(n)], "status": ["FINISHED"] * n, "start_time": list(range(n))}
    return pd.DataFrame({**base, **cols})


def test_match_semantics_numbers_bools_and_null():
    runs = _runs(**{"params.method.n": ["3", "3.0", "2", None], "params.flag": ["True", "False", "True", "True"]})
    assert match_mask(runs, {"method.n": 3}).tolist() == [True, True, False, False]
    assert match_mask(runs, {"flag": True, "method.n": 3}).tolist() == [True, False, False, False]
    assert match_mask(runs, {"guidance.name": None}).tolist() == [True] * 4          # absent key = null
    assert match_mask(runs, {"method.n": None}).tolist() == [False, False, False, True]
    assert match_mask(runs, None).tolist() == [False] * 4


def test_ci95_is_the_student_t_interval():
    mean, half = ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.302652729911275 / 3 ** 0.5)
    assert ci95([5.0]) == (5.0, None)


def test_paper_value_is_never_shown_in_our_column():
    empty = paper_vs_ours(PAPER, pd.DataFrame())
    assert (empty["ours"] == MISSING).all() and (empty["ours_n"] == 0).all()
    # two real-looking mini runs with seed 000 Tab. 4's N=4 CBS keys: they fill the row only once it names its
    # mini twin (mini_scale); then ours is their mean at mini scale, and never the paper's number
    from dataclasses import replace

    runs = _runs(**{"params.method.name": ["cbs", "cbs"], "params.method.n": ["4", "4"], "params.train.seed": ["0", "1"],
                    "params.data.name": ["fashion_mnist"] * 2, "params.backbone.name": ["unet"] * 2,
                    "metrics.fd_smallcnn_256": [40.0, 42.0]})
    (t4,) = [t for t in PAPER if t.id == "cbs_t4_quoted"]
    assert (paper_vs_ours([t4], runs)["ours"] == MISSING).all()      # no twin named: a matching mini run fills nothing
    twin = replace(t4, entries=tuple(replace(e, mini_scale={"data.name": "fashion_mnist"}) for e in t4.entries))
    table = paper_vs_ours([twin], runs)
    row = table[table["row"] == "SiT-B/2, N = 4 (CBS)"].iloc[0]
    assert row["paper"] == "29.33" and row["ours"].startswith("41 ± ") and row["ours_n"] == 2
    assert row["ours_scale"] == "mini (fashion_mnist, unet)" and row["ours_protocol"].startswith("FD (smallcnn features)")
    other = table[table["row"] != "SiT-B/2, N = 4 (CBS)"]
    assert (other["ours"] == MISSING).all()
    full = paper_vs_ours(PAPER, runs)
    assert not (full["ours"] == full["paper"]).any()


def test_latex_output_is_compile_shaped():
    df = paper_vs_ours(PAPER, pd.DataFrame())[["table", "row", "column", "paper", "paper_protocol", "ours"]]
    tex = to_latex(df, caption="all seeds: 50% of cfg_scale & #1 {x} ~ ^ \\ ±")
    body = re.sub(r"\\[{}&%$#_]", "", tex)  # drop escaped specials
    assert body.count("{") == body.count("}")
    assert tex.count("\\begin{") == tex.count("\\end{") == 2
    rows = [ln for ln in tex.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == len(df) + 1
    for ln in rows:
        assert len(re.findall(r"(?<!\\)&", ln)) == df.shape[1] - 1, ln
    for special in ("%", "#", "_", "&"):
        assert not re.search(rf"(?<!\\){re.escape(special)}", body.replace("&", "")) or special == "&"
    assert "\\textbackslash{}" in tex and "\\#1" in tex and "$\\pm$" in tex and "50\\%" in tex


def test_markdown_has_one_row_per_entry_and_escapes_pipes():
    df = pd.DataFrame({"a": ["x|y", "z"], "b": [1.5, None]})
    md = to_markdown(df).splitlines()
    assert md[0] == "| a | b |" and md[2] == "| x\\|y | 1.5 |" and md[3] == "| z |  |"


def test_missing_store_is_a_one_line_error(tmp_path, capsys):
    assert main(["table", f"tracking.uri=sqlite:///{tmp_path}/none.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store at" in err[0]
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_empty_store_and_unknown_table_are_one_line_errors(tmp_path, capsys):
    from harness.track import Tracker

    Tracker(f"sqlite:///{tmp_path}/empty.db", "harness")  # creates the schema and an experiment, no runs
    assert main(["table", f"tracking.uri=sqlite:///{tmp_path}/empty.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no experiment runs" in err[0]
    assert main(["table", "--table", "nope", "--paper", f"tracking.uri=sqlite:///{tmp_path}/empty.db"]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory):
    from tests.mini_store import make_mini_store

    workdir = tmp_path_factory.mktemp("tables_store")
    return workdir, make_mini_store(workdir)


@pytest.mark.slow
def test_round_trip_real_runs_land_in_the_right_cells(mini_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from tests.mini_store import store_overrides

    workdir, ids = mini_store
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    fd = [client.get_run(r).data.metrics for r in ids["monolithic"]]
    name = next(k for k in fd[0] if k.startswith("fd_raw_"))
    mean, half = ci95([m[name] for m in fd])
    out = tmp_path / "t4.csv"
    assert main(["table", "--paper", "--table", "cbs_t4_quoted", "--format", "csv", "--out", str(out),
                 *store_overrides(workdir)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    n1 = table[table["row"] == "SiT-B/2, N = 1 (monolithic)"].iloc[0]
    # a monolithic gmm mini run matches the row's method keys but is not its twin: it never fills the row
    assert n1["paper"] == 34.84 and n1["ours"] == MISSING and n1["n seeds"] == 0
    n4 = table[table["row"] == "SiT-B/2, N = 4 (CBS)"].iloc[0]
    assert n4["ours"] == MISSING and n4["n seeds"] == 0
    # a row that names its mini twin (mini_scale) is filled by the twin's runs, seeds aggregated, with its protocol
    from dataclasses import replace

    from harness.tables.compare import paper_vs_ours
    from harness.tables.paper import load_paper_tables
    from harness.tables.runs import load_runs

    (t4,) = [t for t in load_paper_tables() if t.id == "cbs_t4_quoted"]
    twin = replace(t4, entries=tuple(replace(e, mini_scale={"data.name": "gaussian_mixture"}) for e in t4.entries))
    rows = paper_vs_ours([twin], load_runs(uri))
    n1 = rows[rows["row"] == "SiT-B/2, N = 1 (monolithic)"].iloc[0]
    assert n1["ours_n"] == 2 and n1["ours_scale"] == "mini (gaussian_mixture, mlp)"
    assert n1["ours"] == f"{mean:.4g} ± {half:.2g}" and n1["ours_protocol"] == "FD (raw coordinates), n=200, NFE 5"
    # without --paper: the sweep as a table, one row per method setting, seeds aggregated
    assert main(["table", "sweep=mini_sweep", *store_overrides(workdir), "--format", "md", "--plots", str(tmp_path / "plots")]) == 0
    captured = capsys.readouterr()
    md = [ln for ln in captured.out.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in md[0].strip("|").split("|")]
    rows = {c.split("|")[1].strip(): [x.strip() for x in c.strip("|").split("|")] for c in md[1:]}
    assert set(rows) == {"monolithic", "naive_split"}
    assert rows["monolithic"][header.index("n_seeds")] == "2" and rows["naive_split"][header.index("n_seeds")] == "1"
    assert rows["monolithic"][header.index(name)] == f"{mean:.4g} ± {half:.2g}"
    assert (tmp_path / "plots" / "quality_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    assert "png artifact:" not in captured.err  # gmm runs log no image grid: nothing to list yet
    client.log_artifact(ids["monolithic"][0], str(tmp_path / "plots" / "quality_vs_n.png"), "plots")
    assert main(["table", "sweep=mini_sweep", *store_overrides(workdir), "--format", "csv"]) == 0
    assert f"png artifact: runs:/{ids['monolithic'][0]}/plots/quality_vs_n.png" in capsys.readouterr().err
    # a sweep name nobody used is a clear error
    assert main(["table", "sweep=nope", *store_overrides(workdir)]) == 2
    assert "no runs of sweep 'nope'" in capsys.readouterr().err
    # --columns: the chosen ones, in that order; a column no run has is one line listing those that exist
    assert main(["table", "sweep=mini_sweep", *store_overrides(workdir), "--format", "csv", "--columns", f"n_seeds,{name}"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"n_seeds,{name},table"
    assert main(["table", "sweep=mini_sweep", *store_overrides(workdir), "--columns", "method.n,fid_50k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fid_50k'" in err[0] and all(c in err[0] for c in ("n_seeds", name, "runs", "method.n"))


def test_standard_plots_and_pareto_front(tmp_path):
    from harness.tables.plots import pareto_front, standard_plots

    front = pareto_front(pd.DataFrame({"x": [1.0, 2.0, 1.5, 3.0], "mean": [20.0, 10.0, 8.0, 7.0]}), "x")
    assert front["x"].tolist() == [1.0, 1.5, 3.0]  # (2.0, 10) is dominated by (1.5, 8)
    runs = _runs(**{"run_name": ["cfg", "cfg", "sg", "sg"], "params.method.name": ["cbs"] * 4,
                    "params.method.n": ["2", "2", "3", "3"], "params.train.seed": ["0", "1", "0", "1"],
                    "params.method.boundaries": ["[0.4, 0.77]", "[0.4, 0.77]", "[0.45, 0.77]", "[0.45, 0.77]"],
                    "metrics.fd_smallcnn_256": [10.0, 11.0, 8.0, 8.5], "metrics.gflops_per_nfe_seed004": [2.0, 2.0, 1.5, 1.5]})
    made = {p.name for p in standard_plots(runs, tmp_path)}
    assert made == {"quality_vs_n.png", "quality_vs_boundaries.png", "quality_vs_gflops.png"}
    assert all((tmp_path / m).read_bytes()[:4] == b"\x89PNG" for m in made)
    assert standard_plots(runs.drop(columns=["metrics.fd_smallcnn_256"]), tmp_path / "none") == []  # no quality metric


# ---- tables that fit (issue 19 item 2) ----------------------------------------------------------------------

def _sweep_runs() -> pd.DataFrame:
    """One varied key x two seeds, with every metric and GFLOPs variant a run logs and long run ids."""
    rows = []
    for i, (n, b) in enumerate([(1, 0.4), (2, 0.4), (3, 0.4), (4, 0.4)] * 2):
        seed = i // 4
        rows.append({"run_id": f"{i:02d}" + "f" * 30, "status": "FINISHED", "start_time": i, "run_name": f"cell{i}",
                     "params.method.name": "cbs", "params.method.n": str(n), "params.method.boundary_shift": str(b),
                     "params.train.seed": str(seed), "params.run.name": f"cell{i}", "params.data.name": "fashion_mnist",
                     "params.backbone.name": "unet",
                     "metrics.fd_cnn_fashion_mnist_1k": 30.0 + n + 10 * b + 0.37 * seed,
                     "metrics.fd_smallcnn_1000": 50.0 + n - seed, "metrics.is_smallcnn_1000": 3.0 + seed,
                     "metrics.precision_cnn_1000": 0.5, "metrics.recall_cnn_1000": 0.4,
                     "metrics.gflops_per_image": 12.25 * n, "metrics.gflops_per_nfe": 0.1225 * n,
                     "metrics.gflops_per_image_seed004": 6.125 * n, "metrics.gflops_per_nfe_seed004": 0.06125 * n})
    return pd.DataFrame(rows)


def _render(df, priority, width):
    from rich.console import Console

    from harness.tables.render import print_rich

    console = Console(width=width, file=io.StringIO(), color_system=None)
    hidden = print_rich(df, "sweep x: mean ± 95 % CI over seeds", console=console, priority=priority)
    return console.file.getvalue(), hidden


def _header_cells(text: str) -> list[str]:
    head = next(ln for ln in text.splitlines() if ln.startswith("┃"))
    return [c.strip() for c in head.strip("┃").split("┃")]


def test_default_sweep_table_is_what_a_reader_compares_and_fits_80_columns():
    from harness.tables.commands import select_columns

    table = runs_table(_sweep_runs(), metric="fd_cnn")
    assert table.attrs["default"] == ["method.n", "fd_cnn_fashion_mnist_1k", "n_seeds", "gflops_per_image"]
    assert "run.name" not in table.columns      # bookkeeping params never count as varied keys
    ((caption, shown, priority),) = select_columns([("sweep x", table)], None, False, terminal=True)
    assert list(shown.columns) == table.attrs["default"]
    text, hidden = _render(shown, priority, 80)
    assert hidden == [] and "hidden" not in text
    assert all(len(ln) <= 80 for ln in text.splitlines())
    assert _header_cells(text) == list(shown.columns)               # no header broken over two lines
    for value in shown.astype(str).to_numpy().ravel():              # every number whole, on one line
        assert value in text, value
    # a file format keeps every column, default ones first
    ((_, full, _),) = select_columns([("sweep x", table)], None, False, terminal=False)
    assert list(full.columns) == list(table.columns) and {"runs", "scale", "fd_smallcnn_1000"} <= set(full.columns)


def test_all_columns_on_80_drops_low_priority_ones_whole_and_names_them():
    from harness.tables.commands import select_columns

    table = runs_table(_sweep_runs(), metric="fd_cnn")
    ((_, shown, priority),) = select_columns([("sweep x", table)], None, True, terminal=True)
    text, hidden = _render(shown, priority, 80)
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines if not ln.startswith("hidden to fit"))   # the table; the note is one line
    heads = _header_cells(text)
    assert heads[:4] == table.attrs["default"]                      # the default ones stay, the rest fill in
    assert hidden and set(hidden) | set(heads) == set(table.columns) and not set(hidden) & set(heads)
    note = [ln for ln in lines if ln.startswith("hidden to fit 80 columns:")]
    assert len(note) == 1 and all(h in note[0] for h in hidden)
    for col in heads:
        for value in shown[col].astype(str):
            assert value in text, (col, value)
    wide, none_hidden = _render(shown, priority, 400)
    assert none_hidden == [] and set(_header_cells(wide)) == set(table.columns)


def test_paper_tables_fit_80_columns_without_breaking_headers_or_numbers():
    from harness.tables.commands import _paper_frames, select_columns

    sections, _ = _paper_frames([t for t in PAPER if t.id in ("diffmoe_t3", "sg_t2", "hddm_t4")], pd.DataFrame())
    for caption, shown, priority in select_columns(sections, None, False, terminal=True):
        text, hidden = _render(shown, priority, 80)
        assert all(len(ln) <= 80 for ln in text.splitlines() if not ln.startswith("hidden to fit")), caption
        heads = _header_cells(text)
        assert heads[:2] == ["row", "paper"] or heads[:3] == ["row", "paper setting", "paper"] or "row" in heads
        assert "paper" in heads and "ours" in heads and set(heads) | set(hidden) == set(shown.columns)
        for value in shown["paper"].astype(str):
            assert value in text, value


def test_columns_naming_no_column_lists_the_ones_that_exist():
    from harness.tables.commands import select_columns

    table = runs_table(_sweep_runs(), metric="fd_cnn")
    ((_, shown, _),) = select_columns([("x", table)], "n_seeds,method.n", False, terminal=True)
    assert list(shown.columns) == ["n_seeds", "method.n"]
    with pytest.raises(ConfigError) as err:
        select_columns([("x", table)], "method.n,fid_50k", False, terminal=True)
    line = err.value.one_line()
    assert "\n" not in line and "'fid_50k'" in line
    assert all(c in line.split("Columns: ", 1)[1] for c in table.columns)
