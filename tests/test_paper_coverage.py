"""Issue 16: a table that results/paper covers is covered whole: >= 95 % of the numeric cells of its body in the seed.

A table's body is the run of tab-separated seed lines around the lines its entries cite; the first line of that
run is the header.  A body cell is numeric when it starts with a number (optionally '~'/'≈' or a sign before it:
'9.35', '675M (1.5x)', '0.316 \\pm 0.030', '1E-2', '+114.42', '~14×'); '–' / '-' and words are not.  The first
column is the row label, and so is any column whose header repeats the first one (Table 10 of seed 002 prints
two halves side by side).  A cell counts as transcribed when an entry of that table gives its line and the cell,
or the cell's leading number before ' \\pm ' / ' (' (what test_tables accepts as a value).
"""
import re
from pathlib import Path

import pytest

from harness.tables.paper import PaperTable, load_paper_file, load_paper_tables

SEEDS = Path("/work/shared/seeds")
MIN_COVERAGE = 0.95
_NUMERIC = re.compile(r"^[~≈]?[+\-−]?\d")


def _cells(line: str) -> list[str]:
    return [re.sub(r"</?u>|\*\*", "", c).strip() for c in line.split("\t")]


def _head(cell: str) -> str:
    return re.split(r" \\pm | \(", cell)[0]


def body_cells(table: PaperTable, lines: list[str]) -> list[tuple[int, str]]:
    """(line, cell) of every numeric body cell of the tab-separated blocks the table's entries cite."""
    starts = set()
    for e in table.entries:
        n = e.seed_line
        if 1 <= n <= len(lines) and "\t" in lines[n - 1]:
            while n > 1 and "\t" in lines[n - 2]:
                n -= 1
            starts.add(n)
    out = []
    for start in sorted(starts):
        header = _cells(lines[start - 1])
        n = start + 1
        while n <= len(lines) and "\t" in lines[n - 1]:
            for j, cell in enumerate(_cells(lines[n - 1])):
                is_label = j == 0 or (j < len(header) and header[j] == header[0])
                if not is_label and _NUMERIC.match(cell):
                    out.append((n, cell))
            n += 1
    return out


def coverage(table: PaperTable, lines: list[str]) -> tuple[float, list[tuple[int, str]]]:
    """Share of the table's numeric body cells some entry transcribes, and the cells none does."""
    have = {(e.seed_line, e.value) for e in table.entries}
    cells = body_cells(table, lines)
    missing = [(n, c) for n, c in cells if (n, c) not in have and (n, _head(c)) not in have]
    return (1.0 - len(missing) / len(cells)) if cells else 1.0, missing


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed texts not present on this machine")
def test_every_covered_table_transcribes_at_least_95_percent_of_its_numeric_cells():
    checked, short = 0, []
    texts: dict[str, list[str]] = {}
    for t in load_paper_tables():
        if not t.entries:
            continue
        lines = texts.setdefault(t.seed_file, (SEEDS / t.seed_file).read_text().splitlines())
        if not body_cells(t, lines):  # prose quotes (seed 001), not a table body
            continue
        checked += 1
        share, missing = coverage(t, lines)
        if share < MIN_COVERAGE:
            short.append(f"{t.source} {t.id}: {share:.0%} of the body's numeric cells; missing (line, cell): {missing[:8]}")
    assert checked >= 13, checked
    assert not short, "\n".join(short)


def test_coverage_flags_a_table_that_transcribes_only_its_result_columns(tmp_path):
    lines = ["Table 1: caption", "",
             "Method\t#Epoch\tFID↓\tsFID↓",
             "A [1]\t400\t2.27\t4.60",
             "B (Ours)\t160\t**1.58**\t–",
             "", "prose 2.27"]
    seed = tmp_path / "009_x.txt"
    seed.write_text("\n".join(lines) + "\n")
    doc = tmp_path / "p.yaml"
    doc.write_text("seed_file: 009_x.txt\ntables:\n  - id: t\n    table: Table 1\n    status: transcribed\n"
                   "    protocol: {metric: fid, sampler: x}\n    entries:\n"
                   "      - {row: 'A [1]', column: FID, metric: fid, value: '2.27', line: 4}\n"
                   "      - {row: 'B (Ours)', column: FID, metric: fid, value: '1.58', line: 5}\n")
    (table,) = load_paper_file(doc)
    assert body_cells(table, lines) == [(4, "400"), (4, "2.27"), (4, "4.60"), (5, "160"), (5, "1.58")]  # '–' is not a number
    share, missing = coverage(table, lines)
    assert share == pytest.approx(0.4) and share < MIN_COVERAGE
    assert missing == [(4, "400"), (4, "4.60"), (5, "160")]
