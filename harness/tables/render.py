"""Write a table DataFrame as Markdown, LaTeX or CSV, or print it with rich.

LaTeX is written by hand (not ``DataFrame.to_latex``) so every cell is escaped the same way and the
output is a self-contained ``tabular`` that compiles: braces balanced, one ``&`` fewer than columns
per row, special characters (``& % $ # _ { } ~ ^ \\``) escaped.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

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


# a cell that is a number, 'mean ± half-width', or a placeholder: printed whole, never wrapped
_NUMBER = re.compile(r"^([+\-−]?(\d+(\.\d*)?|\.\d+)([eE][+\-]?\d+)?( ± [\d.eE+\-]+)?|missing|-|nan|)$")
TEXT_MIN = 16          # a text column may fold down to this width (or its header's, if longer)


def is_numeric(values: Sequence[object]) -> bool:
    """Whether every cell of a column is a number (or '12.3 ± 0.4', 'missing', empty) and one is a number."""
    cells = [_cell(v).strip() for v in values]
    return all(_NUMBER.match(c) for c in cells) and any(c and c[-1].isdigit() for c in cells)


def fit_columns(df: pd.DataFrame, width: int, priority: Optional[Sequence[str]] = None) -> tuple[list[str], list[str], dict[str, int]]:
    """Columns of ``df`` that fit a ``width``-character rich table, the ones left out, and each kept one's width.

    A header never breaks (a column is at least as wide as its header) and a numeric column is as wide as its
    widest cell (never wrapped); a text column may fold down to ``TEXT_MIN``.  Columns are taken in ``priority``
    order (default: left to right), and one that does not fit at its minimum is left out rather than squeezed;
    the kept ones keep ``df``'s order.  Space left over widens text columns towards their natural width.
    """
    order = [c for c in (priority or []) if c in df.columns] + [c for c in df.columns if c not in (priority or [])]
    natural, least = {}, {}
    for c in df.columns:
        head = len(str(c))
        cells = [len(_cell(v)) for v in df[c]]
        natural[c] = max([head, *cells])
        if is_numeric(list(df[c])):
            least[c] = natural[c]
        else:
            words = [len(w) for v in df[c] for w in _cell(v).split()]
            least[c] = max(head, min(max(words, default=0), TEXT_MIN))
    kept: list[str] = []
    for c in order:
        if sum(least[k] for k in kept) + least[c] + 3 * (len(kept) + 1) + 1 <= width:
            kept.append(c)
    widths = {c: least[c] for c in kept}
    spare = width - (sum(widths.values()) + 3 * len(kept) + 1)
    for c in kept:   # priority order: the first text columns get their full width first
        grow = min(spare, natural[c] - widths[c])
        widths[c] += grow
        spare -= grow
    shown = [c for c in df.columns if c in kept]
    return shown, [c for c in order if c not in kept], widths


def print_rich(df: pd.DataFrame, title: str, *, console=None, priority: Optional[Sequence[str]] = None) -> list[str]:
    """Print ``df`` as a rich table that fits the console's width (terminal output of ``harness table``).

    Columns that do not fit are left out, lowest ``priority`` first, and named in one line after the table;
    returns their names.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown, hidden, widths = fit_columns(df, console.width, priority)
    table = Table(title=title, show_lines=False)
    for c in shown:
        numeric = is_numeric(list(df[c]))
        table.add_column(str(c), width=widths[c], no_wrap=numeric, overflow="fold", justify="right" if numeric else "left")
    for row in df[shown].itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    console.print(table)
    if hidden:
        console.print(f"hidden to fit {console.width} columns: {', '.join(map(str, hidden))} "
                      "(--columns A,B picks; --format md keeps all)", highlight=False, soft_wrap=True)  # one line
    return hidden
