"""CLI: ``harness table [--paper] [--table NAME] [--format md|latex|csv] [--out FILE] [overrides...]`` and ``harness ui``.

Registered through ``COMMAND_MODULES`` in :mod:`harness.cli`.  The store comes from the config's
``tracking.uri`` (``harness.config.load(overrides)``), so ``tracking.uri=...`` and ``HARNESS_WORKDIR``
select it as for every other command.  ``sweep=NAME`` among the overrides selects the runs tagged
``harness.sweep=NAME``; ``--experiment NAME`` the runs of one MLflow experiment.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from harness.tables.render import FORMATS

PAPER_COLUMNS = {"row": "row", "column": "column", "paper": "paper", "ours": "ours", "ours_n": "n seeds",
                 "ours_scale": "our scale", "ours_protocol": "our protocol"}
# on request (--columns, --all; every file format): the rest of what a paper row knows
PAPER_EXTRA = {"paper_protocol": "paper protocol", "ours_metric": "our metric", "seed_ref": "seed line",
               "ours_runs": "our runs"}
# the order in which a terminal drops paper columns that do not fit (last first)
PAPER_PRIORITY = ("row", "paper", "ours", "column", "n seeds", "paper setting", "our scale", "our protocol")


def _split_overrides(overrides: list[str]) -> tuple[Optional[str], list[str]]:
    """(sweep name or None, the overrides left for the config)."""
    sweep, rest = None, []
    for ov in overrides:
        if ov.startswith("sweep="):
            sweep = ov.split("=", 1)[1]
        else:
            rest.append(ov)
    return sweep, rest


def _warn(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _paper_sections(args, uri: str) -> tuple[list[tuple[str, pd.DataFrame]], pd.DataFrame]:
    from harness.tables.paper import load_paper_tables, select_tables
    from harness.tables.runs import StoreError, load_runs

    tables = select_tables(load_paper_tables(Path(args.paper_dir) if args.paper_dir else None), args.table)
    try:
        runs = load_runs(uri, experiment=args.experiment)
    except StoreError as err:
        _warn(f"{err.one_line()}; every 'ours' cell is missing")
        return _paper_frames(tables, pd.DataFrame())
    if runs.empty:
        _warn(f"no experiment runs in {uri}; every 'ours' cell is missing")
    return _paper_frames(tables, runs)


def _paper_frames(tables, runs: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame]], pd.DataFrame]:
    from harness.tables.compare import paper_vs_ours

    full = paper_vs_ours(tables, runs)
    sections = []
    for t in tables:
        part = full[full["table_id"] == t.id]
        cols = dict(PAPER_COLUMNS)
        if part["paper_setting"].astype(bool).any():  # rows that differ in protocol (seed 003 Tab. 4: CFG, steps)
            cols = {"row": "row", "paper_setting": "paper setting", **{k: v for k, v in cols.items() if k != "row"}}
        show = part[list(cols) + list(PAPER_EXTRA)].rename(columns={**cols, **PAPER_EXTRA})
        show.attrs["default"] = [c for c in PAPER_PRIORITY if c in show.columns]
        proto = "; ".join(f"{k}: {v}" for k, v in t.protocol.items())
        note = f" Note: {t.note}" if t.note else ""
        caption = f"[{t.id}] seed {t.seed_file.split('_')[0]} {t.table}: {t.title}. Paper protocol: {proto or 'n/a'}.{note}"
        sections.append((caption, show))
    return sections, full


def _runs_sections(args, uri: str, sweep: Optional[str]) -> tuple[list[tuple[str, pd.DataFrame]], pd.DataFrame]:
    from harness.tables.compare import runs_table
    from harness.tables.runs import load_runs, require_runs

    runs = load_runs(uri, experiment=args.experiment, sweep=sweep)
    what = f"runs of sweep {sweep!r}" if sweep else (f"runs of experiment {args.experiment!r}" if args.experiment else "experiment runs")
    require_runs(runs, what, uri)
    table = runs_table(runs, metric=_sweep_metric(uri, sweep) if sweep else None)
    title = f"sweep {sweep}" if sweep else f"MLflow experiment {args.experiment or ', '.join(sorted(runs['experiment'].unique()))}"
    return [(f"{title}: mean ± 95 % CI over seeds", table)], runs


def _sweep_metric(uri: str, sweep: str) -> Optional[str]:
    """The metric the sweep file names (tag ``harness.sweep_metric`` of its parent run), or None."""
    from harness.tables.runs import load_runs

    parents = load_runs(uri, sweep=sweep, kind="sweep")
    col = "tags.harness.sweep_metric"
    if parents.empty or col not in parents:
        return None
    value = parents.sort_values("start_time").iloc[-1][col]
    return value if isinstance(value, str) and value else None


def select_columns(sections: list[tuple[str, pd.DataFrame]], names: Optional[str], every: bool,
                   terminal: bool) -> list[tuple[str, pd.DataFrame, Optional[list[str]]]]:
    """(caption, frame, terminal priority) per section: ``--columns`` (in that order), ``--all``, or the default.

    The default is what a reader compares (``attrs["default"]``) on a terminal and every column in a file format.
    A ``--columns`` name that no section has is a ConfigError listing the columns that exist.
    """
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        have = list(dict.fromkeys(c for _, df in sections for c in map(str, df.columns)))
        bad = [n for n in wanted if n not in have]
        if bad or not wanted:
            from harness.core.errors import ConfigError
            from harness.core.registry import suggest

            hint = suggest(bad[0], have) if bad else ""
            raise ConfigError(f"--columns: no run has column {', '.join(map(repr, bad)) or '(none given)'}.{hint} "
                              f"Columns: {', '.join(have)}")
        return [(c, df[[n for n in wanted if n in df.columns]], wanted) for c, df in sections]
    out = []
    for caption, df in sections:
        default = list(df.attrs.get("default") or df.columns)
        if every or not terminal:
            out.append((caption, df, default + [c for c in df.columns if c not in default]))
        else:
            out.append((caption, df[[c for c in df.columns if c in default]], default))
    return out


def _emit(sections: list[tuple[str, pd.DataFrame]], args) -> None:
    from harness.tables.render import print_rich, render, to_csv

    terminal = args.format is None and args.out is None
    chosen = select_columns(sections, args.columns, args.all, terminal)
    if terminal:
        for caption, df, priority in chosen:
            print_rich(df, caption, priority=priority)
        return
    sections = [(c, df) for c, df, _ in chosen]
    fmt = args.format or {".tex": "latex", ".csv": "csv"}.get(Path(args.out).suffix, "md")
    if fmt == "csv":
        text = to_csv(pd.concat([df.assign(table=c.split("]")[0].lstrip("[")) for c, df in sections], ignore_index=True))
    else:
        text = "\n".join(render(df, fmt, caption) for caption, df in sections)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_table(args) -> int:
    """``harness table``: paper tables beside ours (--paper) or a sweep / experiment as a table."""
    from harness.config import load

    if args.report:
        from harness.tables.report import write_report

        for path in write_report(args.report):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    sweep, overrides = _split_overrides(list(args.overrides))
    cfg = load(overrides)
    uri = cfg["tracking"]["uri"]
    if args.paper:
        sections, full = _paper_sections(args, uri)
        run_ids = sorted({r for ids in full["ours_runs"] for r in str(ids).split(",") if r})
        runs = None
    else:
        sections, runs = _runs_sections(args, uri, sweep)
        run_ids = list(runs["run_id"])
    _emit(sections, args)
    _plots(args, uri, runs, run_ids, sweep)
    return 0


def _plots(args, uri: str, runs: Optional[pd.DataFrame], run_ids: list[str], sweep: Optional[str]) -> None:
    """Write the standard figures (``--plots DIR``), log them to the sweep's parent run, list every PNG artifact."""
    from harness.tables.plots import list_png_artifacts, standard_plots

    if args.plots and runs is not None:
        made = standard_plots(runs, Path(args.plots))
        for p in made:
            print(f"plot: {p}", file=sys.stderr)
        parent = _sweep_parent(uri, sweep) if sweep else None
        if parent and made:
            from harness.track import Tracker  # noqa: F401  (store exists: runs were read from it)
            from mlflow.tracking import MlflowClient

            for p in made:
                MlflowClient(tracking_uri=uri).log_artifact(parent, str(p), "plots")
    if run_ids and not args.no_artifacts:
        for rid, path in list_png_artifacts(uri, run_ids):
            print(f"png artifact: runs:/{rid}/{path}", file=sys.stderr)


def _sweep_parent(uri: str, sweep: str) -> Optional[str]:
    from harness.tables.runs import load_runs

    parents = load_runs(uri, sweep=sweep, kind="sweep")
    return None if parents.empty else str(parents.sort_values("start_time").iloc[-1]["run_id"])


def cmd_ui(args) -> int:
    """``harness ui``: serve the configured store's MLflow UI on 127.0.0.1 until Ctrl-C."""
    from harness.config import load
    from harness.tables.runs import load_runs
    from harness.tables.ui import is_loopback, serve

    cfg = load(list(args.overrides))
    # a cluster's tracking server (--host 0.0.0.0) may start on a fresh store; the local UI warns when it is empty
    if is_loopback(args.host) and load_runs(cfg["tracking"]["uri"], kind=None).empty:
        _warn(f"the store {cfg['tracking']['uri']} has no runs yet: the UI will be empty (harness run ... fills it)")
    log = Path(cfg["paths"]["workdir"]) / "mlflow_ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return serve(cfg["tracking"]["uri"], args.port, host=args.host, log=log, experiment=cfg["run"]["experiment_name"],
                 open_browser=args.open)


def add_commands(sub: Any, add: Callable[..., Any]) -> None:
    """Register ``table`` and ``ui`` with the harness CLI (see ``COMMAND_MODULES`` in harness/cli.py)."""
    sp = add("table", cmd_table, "paper numbers beside ours (--paper), or a sweep (sweep=NAME) / experiment as a table")
    sp.add_argument("--paper", action="store_true", help="the seeds' transcribed tables beside our runs")
    sp.add_argument("--report", default=None, metavar="SWEEP_FILE",
                    help="render the sweep file's report: from its committed results file (no store needed)")
    sp.add_argument("--table", default=None, metavar="NAME", help="only this table id (e.g. diffmoe_t3, cbs_t1_quoted)")
    sp.add_argument("--format", choices=FORMATS, default=None, help="md | latex | csv (default: a rich table on the terminal)")
    sp.add_argument("--out", default=None, metavar="FILE", help="write the table here (format from --format or the suffix)")
    sp.add_argument("--paper-dir", default=None, metavar="DIR", help="transcribed tables (default: the repo's results/paper)")
    sp.add_argument("--experiment", default=None, metavar="NAME", help="only runs of this MLflow experiment")
    sp.add_argument("--plots", default=None, metavar="DIR", help="write quality-vs-N / boundaries / GFLOPs PNGs here")
    sp.add_argument("--no-artifacts", action="store_true", help="do not list the runs' PNG artifacts")
    sp.add_argument("--columns", default=None, metavar="A,B",
                    help="show these columns, in this order (default: the varied keys, the metric ± CI, n seeds, GFLOPs "
                         "per image on a terminal; every column in md/latex/csv)")
    sp.add_argument("--all", action="store_true", help="every column (a terminal still leaves out what does not fit)")
    sp = add("ui", cmd_ui, "the MLflow UI on 127.0.0.1 over the project's store (Ctrl-C stops it)")
    sp.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    sp.add_argument("--open", action="store_true", help="open the runs page in this machine's web browser")
    sp.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1); 0.0.0.0: the tracking server of a cluster's jobs (README)")
