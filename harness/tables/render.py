"""Write a table DataFrame as Markdown, LaTeX or CSV, or print it with rich.

LaTeX is written by hand (not ``DataFrame.to_latex``) so every cell is escaped the same way and the
output is a self-contained ``tabular`` that compiles: braces balanced, one ``&`` fewer than columns
per row, special characters (``& % $ # _ { } ~ ^ \\``) escaped.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

FORMATS = ("md", "latex", "csv")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "−": "-", "–": "--", "×": r"$\times$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
                  "Δ": r"$\Delta$", "ω": r"$\omega$", "γ": r"$\gamma$", "≤": r"$\le$", "Σ": r"$\Sigma$"}


def latex_escape(text: object) -> str:
    """Escape one cell for LaTeX text mode."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _cell(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    cols = [str(c) for c in df.columns]
    esc = lambda s: _cell(s).replace("|", r"\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: Optional[str] = None) -> str:
    """A ``table`` environment holding a ``tabular`` with one left-aligned column per DataFrame column."""
    cols = [str(c) for c in df.columns]
    out = ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{" + "l" * len(cols) + "}", "\\hline",
           " & ".join(latex_escape(c) for c in cols) + " \\\\", "\\hline"]
    out += [" & ".join(latex_escape(_cell(v)) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    out += ["\\hline", "\\end{tabular}"]
    if caption:
        out.append("\\caption{" + latex_escape(caption) + "}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV without the index (one header line, then one line per row)."""
    return df.to_csv(index=False)


def render(df: pd.DataFrame, fmt: str, caption: Optional[str] = None) -> str:
    """``df`` in ``fmt`` (md | latex | csv)."""
    if fmt == "md":
        return (f"**{caption}**\n\n" if caption else "") + to_markdown(df)
    if fmt == "latex":
        return to_latex(df, caption)
    return to_csv(df)


def print_rich(df: pd.DataFrame, title: str) -> None:
    """Print ``df`` as a rich table (terminal output of ``harness table``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(str(c), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    Console().print(table)
