"""The paper rows one run fills, printed after ``harness eval`` (and why a run that matches a row does not fill it)."""
from __future__ import annotations

import sys

import pandas as pd


def _near_misses(tables, run: pd.DataFrame) -> list[str]:
    """One line per paper row whose method keys the run carries but not its paper scale (what differs)."""
    from harness.tables.compare import match_mask, param_text

    if run.empty:
        return []
    first, out, seen = run.iloc[0].to_dict(), [], set()
    for t in tables:
        for e in t.entries:
            if e.match is None or not bool(match_mask(run, e.match).iloc[0]) or (t.id, e.row) in seen:
                continue
            seen.add((t.id, e.row))
            differ = [f"{k}={v} (run: {first.get(f'params.{k}', 'unset')})" for k, v in e.paper_scale.items()
                      if param_text(first.get(f"params.{k}")) != param_text(v)]
            out.append(f"  matches [{t.id}] {t.table} row {e.row!r} (paper {e.metric} {e.value}) but not its paper scale: "
                       + ", ".join(differ))
    return out


def print_paper_rows_of(uri: str, run_id: str) -> int:
    """Print the paper rows one run fills, its number beside the paper's (``harness eval``); returns how many."""
    from harness.tables.compare import paper_vs_ours
    from harness.tables.paper import load_paper_tables
    from harness.tables.render import print_rich
    from harness.tables.runs import load_runs

    runs = load_runs(uri)
    runs = runs[runs["run_id"] == run_id] if not runs.empty else runs
    full = paper_vs_ours(load_paper_tables(), runs) if not runs.empty else pd.DataFrame()
    mine = full[full["ours_runs"].astype(str).str.split(",").apply(lambda ids: run_id in ids)] if not full.empty else full
    if mine.empty:
        print(f"run {run_id} fills no row of the transcribed paper tables (results/paper/*.yaml)", file=sys.stderr)
        for line in _near_misses(load_paper_tables(), runs):
            print(line, file=sys.stderr)
        return 0
    cols = {"table": "table", "row": "row", "column": "column", "paper": "paper", "ours": "ours",
            "ours_scale": "our scale", "ours_protocol": "our protocol"}
    show = mine.assign(table=mine["table_id"] + " " + mine["table"])[list(cols)].rename(columns=cols)
    from rich.console import Console

    print_rich(show, f"paper rows filled by run {run_id} (harness table --paper shows them all)", console=Console(stderr=True),
               priority=("row", "paper", "ours", "column", "table", "our scale", "our protocol"))
    return len(show)
