"""``harness table --report SWEEP_FILE``: a reproduction report rendered from the sweep's committed results file.

The report is a pure function of the sweep file's ``report:`` spec and its results file
(:mod:`harness.sweep.results`): no store, no config composition, no date, so it regenerates byte for
byte on any machine.  It states its protocol (extractor, weights hash, reference, samples, sampler, NFE,
seeds), the effect it looks for, per-row mean ± 95 % Student-t interval over seeds, and paired
differences over the seeds both rows share (``pair_by``) with their interval, the number of pairs and
how many favour the first row; the paper's effect is printed beside ours, never a CPU number beside an
ImageNet FID in one column.  Cells scored under different extractor weights or references are refused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from harness.core.errors import ConfigError
from harness.core.stats import ci95
from harness.sweep.results import read_results_file
from harness.sweep.spec import read_spec
from harness.sweep.summary import pick_metric

# protocol fields that must agree across every cell of a report (numbers under two protocols never share a table)
SAME_PROTOCOL = ("extractor", "weights_sha256", "reference_hash", "n_samples", "sampler", "nfe", "protocol_version")


def metric_name(metrics: Mapping[str, Any], wanted: str) -> Optional[str]:
    """An exact metric name, else the first logged name ``wanted_<n>`` (:func:`~harness.sweep.summary.pick_metric`)."""
    return pick_metric(wanted, metrics, count_suffix=True)


def _fmt(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4g}"


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value_text(x) for x in v) + "]"
    return str(v)


def _cell_value(rec: Mapping[str, Any], key: str) -> Any:
    if key.startswith("metrics."):
        return rec.get("metrics", {}).get(key[len("metrics."):])
    if key.startswith("cost."):
        return rec.get("cost", {}).get(key[len("cost."):])
    if key.startswith("method.") and key[len("method."):] in (rec.get("method") or {}):
        return rec["method"][key[len("method."):]]        # what the method reports (CBS's derived boundaries)
    return rec.get("keys", {}).get(key)


class Report:
    """A sweep file's report spec joined with its exported cells, checked for what rendering needs."""

    def __init__(self, sweep_file: Path | str) -> None:
        spec = read_spec(sweep_file)
        if not spec.report:
            raise ConfigError(f"{sweep_file}: report: missing", hint="add a report: section (harness/sweep/report_spec.py)")
        self.file, self.rep = Path(sweep_file), spec.report
        self.results = Path(str(self.rep["results"]))
        payload = read_results_file(self.results)
        cells, self.base = dict(payload.get("cells") or {}), list(payload.get("base") or [])
        if not cells:
            raise ConfigError(f"{self.results}: no finished cell", hint=f"run `harness sweep {sweep_file}` first")
        self.cells = [cells[k] for k in sorted(cells)]
        # rows the sweep file declares (its list: and grid: values of the rows key): named in differences before
        # their cells finish, they read "not run yet" in a half-finished reproduction instead of refusing it
        rows_key = str(self.rep["rows"])
        self.planned = {_value_text(e[rows_key]) for e in spec.entries if rows_key in e} | \
            {_value_text(v) for v in spec.grid.get(rows_key, [])}
        self._check_keys()
        self.metrics = [self._metric(m) for m in self.rep["metrics"]]
        self.protocol = self._check_protocol()

    def _check_keys(self) -> None:
        rep = self.rep
        named = [("rows", rep["rows"]), *(("group", g) for g in rep["group"])]
        named += [("pair_by", rep["pair_by"])] if rep.get("pair_by") else []
        named += [(f"columns.{h}", k) for h, k in rep["columns"].items()]
        named += [(f"plot.{k}", str(rep["plot"][k])) for k in ("x", "hue") if rep.get("plot") and rep["plot"].get(k)]
        for where, key in named:
            if all(_cell_value(c, key) is None for c in self.cells):
                raise ConfigError(f"{self.file}: report.{where}: no cell has key {key!r}",
                                  hint=f"keys the cells carry: {', '.join(sorted({k for c in self.cells for k in c.get('keys', {})}))}")
        rows = {str(_cell_value(c, rep["rows"])) for c in self.cells}
        self.present_anywhere = rows
        curve_pairs = [("curve.differences", d) for d in (rep["curve"]["differences"] if rep.get("curve") else [])]
        inter_pairs = [(f"interactions[{i}].difference", x["difference"]) for i, x in enumerate(rep["interactions"])]
        for where, (a, b) in [*(("differences", d) for d in rep["differences"]), *curve_pairs, *inter_pairs]:
            for side in (a, b):
                if side not in rows and side not in self.planned:
                    raise ConfigError(f"{self.file}: report.{where}: no cell has {rep['rows']}={side}",
                                      hint=f"rows present: {', '.join(sorted(rows))}")
        present_groups = {_group_text(g) for g, _ in self.groups()}
        for i, inter in enumerate(rep["interactions"]):
            for g in inter["groups"]:
                if _group_text(g) not in present_groups:
                    raise ConfigError(f"{self.file}: report.interactions[{i}].groups: no cell has "
                                      f"{', '.join(f'{k}={_value_text(v)}' for k, v in zip(rep['group'], g))}",
                                      hint=f"groups present: {'; '.join(', '.join(g) for g in sorted(present_groups))}")
        if rep.get("curve"):
            key = rep["curve"]["protocol"]
            bad = next((c for c in self.cells if not isinstance(c.get("protocol", {}).get(key), list)), None)
            if bad is not None:
                raise ConfigError(f"{self.results}: cell {self._label(bad)}: protocol.{key} missing (report.curve.protocol)",
                                  hint=f"its protocol keys: {', '.join(sorted(bad.get('protocol', {})))}; re-run the cell")
            if len({len(c["protocol"][key]) for c in self.cells}) > 1:
                raise ConfigError(f"{self.results}: protocol.{key} has different lengths between cells",
                                  hint="cells were scored on different t grids: re-run them under one protocol")

    def _metric(self, wanted: str) -> str:
        names = {metric_name(c.get("metrics", {}), wanted) for c in self.cells}
        if None in names:
            bad = next(c for c in self.cells if metric_name(c.get("metrics", {}), wanted) is None)
            raise ConfigError(f"{self.results}: cell {self._label(bad)}: metric {wanted!r} missing",
                              hint=f"its metrics: {', '.join(sorted(bad.get('metrics', {}))) or 'none'}; re-run the cell")
        if len(names) > 1:
            raise ConfigError(f"{self.results}: metric {wanted!r} was logged under several names ({', '.join(sorted(names))})",
                              hint="cells were scored with different sample counts: re-run them under one eval.n_samples")
        return names.pop()

    def _label(self, rec: Mapping[str, Any]) -> str:
        keys = [self.rep["rows"], *self.rep["group"], *([self.rep["pair_by"]] if self.rep.get("pair_by") else [])]
        return " ".join(f"{k}={_value_text(_cell_value(rec, k))}" for k in keys)

    def _check_protocol(self) -> dict[str, Any]:
        proto: dict[str, Any] = {}
        for field in SAME_PROTOCOL:
            seen: dict[str, list[str]] = {}
            for c in self.cells:
                seen.setdefault(str(c.get("protocol", {}).get(field)), []).append(self._label(c))
            if len(seen) > 1:
                detail = "; ".join(f"{v[:16]}: {len(cells)} cell(s), e.g. {cells[0]}" for v, cells in seen.items())
                hint = "a table never mixes protocols: re-run the odd cells under one protocol"
                if field == "weights_sha256":
                    hint += (" (a trained extractor is retrained per machine unless its weights ship: "
                             "harness/evaluate/weights/ holds eval=fd_cnn_fmnist's)")
                raise ConfigError(f"{self.results}: protocol.{field} differs between cells ({detail})", hint=hint)
            proto[field] = next(iter(seen))
        return proto

    # ------------------------------------------------------------------ the numbers
    def groups(self) -> list[tuple[tuple, list[Mapping[str, Any]]]]:
        out: dict[tuple, list] = {}
        for c in self.cells:
            out.setdefault(tuple(_value_text(_cell_value(c, g)) for g in self.rep["group"]), []).append(c)
        return sorted(out.items(), key=lambda kv: [_sort_key(v) for v in kv[0]])

    def row_order(self, cells: Sequence[Mapping[str, Any]]) -> list[str]:
        present = {str(_cell_value(c, self.rep["rows"])) for c in cells}
        named = [*self.rep["labels"], *(r for pair in self.rep["differences"] for r in pair)]
        ordered = list(dict.fromkeys(r for r in named if r in present))
        return ordered + sorted(present - set(ordered))

    def values(self, cells, row: str, metric: str) -> dict[Any, float]:
        """{pair_by value: metric} of one row (the pair key is the seed; without it, the cell index)."""
        out = {}
        for i, c in enumerate(c for c in cells if str(_cell_value(c, self.rep["rows"])) == row):
            key = _cell_value(c, self.rep["pair_by"]) if self.rep.get("pair_by") else i
            out[key] = float(c["metrics"][metric])
        return out

    def render(self) -> str:
        rep, lines = self.rep, []
        lines += [f"# {rep['title']}", "",
                  f"Rendered by `harness table --report {self.file.as_posix()}` from `{self.results.as_posix()}` "
                  f"({len(self.cells)} cells); regenerate it with the same command. Sweep: `harness sweep {self.file.as_posix()}`.", ""]
        if rep.get("effect"):
            lines += [f"**Effect of interest.** {rep['effect']}", ""]
        if rep.get("paper"):
            lines += [f"**The paper's effect.** {rep['paper']}", ""]
        lines += ["## Protocol", ""] + self._protocol_lines() + [""]
        lines += ["## Results", ""]
        for group, cells in self.groups():
            if rep["group"]:
                lines += [f"### {', '.join(f'{k} = {v}' for k, v in zip(rep['group'], group))}", ""]
            lines += self._rows_table(cells) + [""]
            if rep["differences"]:
                lines += self._diff_table(cells) + [""]
        if rep["interactions"]:
            lines += self._interaction_lines() + [""]
        if rep.get("curve"):
            lines += self._curve_lines() + [""]
        if rep.get("reading"):
            path = Path(str(rep["reading"]))
            text = path.read_text().strip() if path.exists() else f"_(missing: {path.as_posix()})_"
            lines += ["## Reading", "", text, ""]
        return "\n".join(lines).rstrip() + "\n"

    def _protocol_lines(self) -> list[str]:
        p = self.protocol
        c0 = self.cells[0]
        seeds = sorted({_value_text(_cell_value(c, self.rep["pair_by"])) for c in self.cells}, key=_sort_key) \
            if self.rep.get("pair_by") else []
        base = " ".join(self.base)
        proto0 = c0.get("protocol", {})
        lines = [f"- sweep base: `{base}`" if base else "- sweep base: (none)",
                 f"- metrics: {', '.join(f'`{m}`' for m in self.metrics)} (the first is primary, to {self.rep['direction']}); extractor "
                 f"`{p['extractor']}` (weights sha256 `{str(p['weights_sha256'])[:12]}`), reference hash "
                 f"`{str(p['reference_hash'])[:12]}` ({proto0.get('reference_n')} items), {p['n_samples']} samples "
                 f"(seeds {proto0.get('seeds')}), sampler `{p['sampler']}`, NFE {p['nfe']}, protocol version {p['protocol_version']}",
                 f"- cells: {len(self.cells)}"
                 + (f"; rows of the sweep not run yet: {', '.join(sorted(self.planned - self.present_anywhere, key=_sort_key))}"
                    if self.planned - self.present_anywhere else "")]
        if seeds:
            lines.append(f"- paired by `{self.rep['pair_by']}`: {', '.join(seeds)} (95 % Student-t intervals over pairs)")
        return lines

    def _rows_table(self, cells) -> list[str]:
        rep = self.rep
        head = [rep["rows"], "n", *(f"{m} (mean ± 95 % CI)" for m in self.metrics), *rep["columns"]]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.row_order(cells):
            mine = [c for c in cells if str(_cell_value(c, rep["rows"])) == row]
            stats = []
            for m in self.metrics:
                mean, half = ci95([float(c["metrics"][m]) for c in mine])
                stats.append(_fmt(mean) + ("" if half is None else f" ± {_fmt(half)}"))
            extra = []
            for key in rep["columns"].values():
                vals = [_cell_value(c, key) for c in mine]
                shown = sorted({_value_text(v) for v in vals if v is not None}, key=_sort_key)
                extra.append(shown[0] if len(shown) == 1 else (" / ".join(shown) if len(shown) <= 3
                                                               else f"{shown[0]} … {shown[-1]} ({len(shown)} values)"))
            out.append("| " + " | ".join([rep["labels"].get(row, row), str(len(mine)), *stats, *extra]) + " |")
        return out

    def favouring_first(self, differences: list[float]) -> int:
        """How many paired differences (first − second) favour the first under the report's ``direction``."""
        minimize = self.rep["direction"] == "minimize"
        return sum((x < 0) if minimize else (x > 0) for x in differences)

    def _diff_table(self, cells) -> list[str]:
        better = "lower" if self.rep["direction"] == "minimize" else "higher"
        head = ["paired difference", *(f"{m}: mean ± 95 % CI (relative)" for m in self.metrics), "pairs",
                f"first {better} in ({self.metrics[0]})"]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        present = set(self.row_order(cells))
        for a, b in self.rep["differences"]:
            if a not in present or b not in present:
                unrun = {a, b} - self.present_anywhere     # declared rows without a cell (_check_keys)
                if unrun:
                    missing = " and ".join(sorted(unrun))
                    label = f"{self.rep['labels'].get(a, a)} − {self.rep['labels'].get(b, b)}"
                    out.append("| " + " | ".join([label, *([f"not run yet ({missing})"] * len(self.metrics)), "0", "–"]) + " |")
                continue
            cols, n, wins = [], 0, 0
            for j, m in enumerate(self.metrics):
                va, vb = self.values(cells, a, m), self.values(cells, b, m)
                common = sorted(set(va) & set(vb), key=lambda s: _sort_key(_value_text(s)))
                if not common:
                    cols.append("no common pair")
                    continue
                d = [va[s] - vb[s] for s in common]
                mean, half = ci95(d)
                ref = sum(vb[s] for s in common) / len(common)
                rel = f" ({100 * mean / ref:+.1f} %)" if ref else ""
                cols.append(f"{mean:+.4g}" + ("" if half is None else f" ± {half:.2g}") + rel)
                if j == 0:
                    n = len(common)
                    wins = self.favouring_first(d)
            label = f"{self.rep['labels'].get(a, a)} − {self.rep['labels'].get(b, b)}"
            out.append("| " + " | ".join([label, *cols, str(n), f"{wins}/{n}"]) + " |")
        return out

    # ------------------------------------------------------------------ differences of differences
    def interaction(self, inter: Mapping[str, Any], metric: str) -> tuple[list[float], list[float]]:
        """Per pair: (a − b in the first group) − (a − b in the second), absolute and in percentage points of b.

        The relative form compares the two groups' effects on their own baselines (two trainings' FDs differ in
        scale: seed 004 Fig. 2's "CFG helps the sparse model less" is a statement about relative gains).
        """
        (a, b), (g1, g2) = inter["difference"], inter["groups"]
        by_group = {_group_text(g): cells for g, cells in self.groups()}
        per = []
        for g in (g1, g2):
            cells = by_group[_group_text(g)]
            va, vb = self.values(cells, a, metric), self.values(cells, b, metric)
            per.append({s: (va[s] - vb[s], 100 * (va[s] - vb[s]) / vb[s] if vb[s] else math.nan)
                        for s in set(va) & set(vb)})
        common = sorted(set(per[0]) & set(per[1]), key=lambda s: _sort_key(_value_text(s)))
        return ([per[0][s][0] - per[1][s][0] for s in common], [per[0][s][1] - per[1][s][1] for s in common])

    def _interaction_lines(self) -> list[str]:
        rep = self.rep
        better = "lower" if rep["direction"] == "minimize" else "higher"
        lines = ["## Differences of differences", "",
                 f"Per `{rep['pair_by']}`: the paired difference in the first group minus the same difference in the "
                 "second (mean ± 95 % CI), absolute and in percentage points (pp) of each group's own second row.", ""]
        head = ["interaction", *(f"{m}: absolute; relative (pp)" for m in self.metrics), "pairs", f"first {better} in ({self.metrics[0]})"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for inter in rep["interactions"]:
            (a, b), (g1, g2) = inter["difference"], inter["groups"]
            cols, n, wins = [], 0, 0
            for j, m in enumerate(self.metrics):
                absolute, relative = self.interaction(inter, m)
                if not absolute:
                    cols.append("no common pair")
                    continue
                (ma, ha), (mr, hr) = ci95(absolute), ci95(relative)
                cols.append(f"{ma:+.4g}" + ("" if ha is None else f" ± {ha:.2g}") + f"; {mr:+.1f}"
                            + ("" if hr is None else f" ± {hr:.1f}") + " pp")
                if j == 0:
                    n = len(absolute)
                    wins = self.favouring_first(absolute)
            where = lambda g: ", ".join(f"{k} = {_value_text(v)}" for k, v in zip(rep["group"], g))   # noqa: E731
            label = f"({rep['labels'].get(a, a)} − {rep['labels'].get(b, b)}) at {where(g1)} − at {where(g2)}"
            lines.append("| " + " | ".join([label, *cols, str(n), f"{wins}/{n}"]) + " |")
        return lines

    # ------------------------------------------------------------------ the per-t curve
    def curve_differences(self) -> tuple[list[float], list[tuple[str, list[tuple[float, Optional[float]]], int]]]:
        """Midpoint t and, per ``curve.differences`` pair, the paired difference at each t: [(mean, 95 % half-width)]."""
        key = self.rep["curve"]["protocol"]
        n_t = len(self.cells[0]["protocol"][key])
        ts = [(k + 0.5) / n_t for k in range(n_t)]
        out = []

        def by_pair(row: str) -> dict[Any, list[float]]:
            return {_cell_value(c, self.rep["pair_by"]): [float(v) for v in c["protocol"][key]]
                    for c in self.cells if str(_cell_value(c, self.rep["rows"])) == row}

        for a, b in self.rep["curve"]["differences"]:
            ca, cb = by_pair(a), by_pair(b)
            common = sorted(set(ca) & set(cb), key=lambda s: _sort_key(_value_text(s)))
            stats = [ci95([ca[s][k] - cb[s][k] for s in common]) if common else (None, None) for k in range(n_t)]
            out.append((f"{self.rep['labels'].get(a, a)} − {self.rep['labels'].get(b, b)}", stats, len(common)))
        return ts, out

    def curve_path(self) -> Path:
        """``OUT_curve.png``: where :meth:`curve_plot` writes and what the report links to."""
        out = Path(str(self.rep["out"]))
        return out.with_name(out.name + "_curve.png")

    def _curve_lines(self) -> list[str]:
        key = self.rep["curve"]["protocol"]
        ts, diffs = self.curve_differences()
        name = self.curve_path().name
        lines = ["## Per-t paired differences", "",
                 f"`protocol.{key}` at midpoint t, paired by `{self.rep['pair_by']}` (mean ± 95 % CI); picture: "
                 f"[{name}]({name}), with each row's boundaries.", ""]
        head = ["paired difference", "pairs", *(f"t={t:.3g}" for t in ts)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, stats, n in diffs:
            cells = ["–" if m is None else f"{m:+.3g}" + ("" if h is None else f" ± {h:.2g}") for m, h in stats]
            lines.append("| " + " | ".join([label, str(n), *cells]) + " |")
        return lines

    def curve_plot(self, path: Path) -> Optional[Path]:
        """Per-t paired differences (mean ± 95 % CI) with the compared rows' boundaries as vertical lines."""
        if not self.rep.get("curve"):
            return None
        import textwrap

        from harness.core.figures import pyplot, save_png

        ts, diffs = self.curve_differences()
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        drawn: set = set()
        for i, ((label, stats, n), (a, b)) in enumerate(zip(diffs, self.rep["curve"]["differences"])):
            color = f"C{i % 10}"
            ax.errorbar(ts, [m if m is not None else math.nan for m, _ in stats], yerr=[h or 0.0 for _, h in stats],
                        marker="o", markersize=3, capsize=2, color=color, label=f"{label} ({n} pairs)")
            for j, row in enumerate((a, b)):
                for c in self.cells:
                    bounds = _cell_value(c, "method.boundaries")
                    if str(_cell_value(c, self.rep["rows"])) != row or not isinstance(bounds, list):
                        continue
                    for x in bounds:
                        if (row, round(float(x), 3)) not in drawn:
                            drawn.add((row, round(float(x), 3)))
                            ax.axvline(float(x), color=color, alpha=0.5, linewidth=1, linestyle="-" if j == 0 else ":")
        ax.set_xlabel("t (0 = noise, 1 = data); vertical lines: boundaries (solid first row, dotted second)")
        ax.set_ylabel(f"paired difference of\n{self.rep['curve']['protocol']}")
        ax.set_xlim(0, 1)
        ax.set_title("\n".join(textwrap.wrap(self.rep["title"], 70)), fontsize=8)
        ax.legend(fontsize=7)
        return save_png(fig, path)

    # ------------------------------------------------------------------ the picture
    def plot(self, path: Path) -> Optional[Path]:
        """Metric (mean ± 95 % CI over seeds) against ``plot.x``, one line per ``plot.hue`` value (default: rows;
        ``plot.series`` maps row values to line names, e.g. cbs2, cbs3, cbs4 -> "CBS").

        Cells without a value for ``x`` (a monolithic baseline has no ``method.n``) are drawn as dashed
        horizontal lines, so a baseline stays visible beside the curves.  A report with ``group:`` gets one
        panel per group (shared y axis, one colour per line across panels): cells of different groups are
        different models and never pooled into one mean.  None without ``plot:``.
        """
        from harness.core.figures import save_png

        fig = self.figure()
        return None if fig is None else save_png(fig, path)

    def figure(self):
        """The matplotlib figure :meth:`plot` saves (None without ``plot:``)."""
        spec = self.rep.get("plot")
        if not spec:
            return None
        import textwrap

        from harness.core.figures import pyplot

        metric = self._metric(str(spec.get("metric", self.rep["metrics"][0])))
        x_key, hue_key = str(spec["x"]), str(spec.get("hue") or self.rep["rows"])
        names = {str(k): str(v) for k, v in (spec.get("series") or {}).items()}   # row value -> series label

        def series_of(cells) -> dict[str, dict[Any, list[float]]]:
            series: dict[str, dict[Any, list[float]]] = {}
            for c in cells:
                hue = _value_text(_cell_value(c, hue_key))
                hue = names.get(hue, hue) if names else hue
                series.setdefault(hue, {}).setdefault(_cell_value(c, x_key), []).append(float(c["metrics"][metric]))
            return series

        everything = series_of(self.cells)
        colours = {hue: f"C{i % 10}" for i, hue in enumerate(sorted(everything, key=_sort_key))}
        xs_all = sorted({x for by_x in everything.values() for x in by_x if x is not None},
                        key=lambda v: _sort_key(_value_text(v)))
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
        where = {x: (float(x) if numeric else i) for i, x in enumerate(xs_all)}
        panels = self.groups() if self.rep["group"] else [((), self.cells)]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(6.0 if len(panels) == 1 else 4.6 * len(panels), 3.8),
                                 dpi=110, sharey=True, squeeze=False)
        for ax, (group, cells) in zip(axes[0], panels):
            series = series_of(cells)
            for hue in sorted(series, key=_sort_key):
                by_x, color = series[hue], colours[hue]
                label = self.rep["labels"].get(hue, hue)
                if None in by_x:
                    mean, half = ci95(by_x[None])
                    ax.axhline(mean, linestyle="--", linewidth=1, color=color, label=f"{label} (no {x_key})")
                    if half:
                        ax.axhspan(mean - half, mean + half, color=color, alpha=0.12)
                xs = [x for x in xs_all if x in by_x]
                if xs:
                    stats = [ci95(by_x[x]) for x in xs]
                    ax.errorbar([where[x] for x in xs], [m for m, _ in stats], yerr=[h or 0.0 for _, h in stats],
                                marker="o", capsize=3, color=color, label=label)
            if numeric and all(float(x).is_integer() for x in xs_all):
                ax.set_xticks([where[x] for x in xs_all], [_value_text(x) for x in xs_all])
            if not numeric:
                ax.set_xticks([where[x] for x in xs_all], [_value_text(x) for x in xs_all], rotation=30, ha="right")
            ax.set_xlabel(x_key)
            if group:
                ax.set_title(", ".join(f"{k} = {v}" for k, v in zip(self.rep["group"], group)), fontsize=8)
            ax.legend(fontsize=6 if len(panels) > 1 else 7)
        axes[0][0].set_ylabel(f"{metric}\n(mean ± 95 % CI over {self.rep.get('pair_by') or 'cells'})")
        if not self.rep["group"]:
            axes[0][0].set_title("\n".join(textwrap.wrap(self.rep["title"], 70)), fontsize=8)
        else:
            fig.suptitle("\n".join(textwrap.wrap(self.rep["title"], 110)), fontsize=8)
        return fig


def _group_text(values: Sequence[Any]) -> tuple:
    """A spec's group values as :meth:`Report.groups` spells them (0, 0.0 and "0.0" name one group)."""
    def one(v: Any) -> str:
        try:
            return _value_text(float(v)) if not isinstance(v, bool) else str(v)
        except (TypeError, ValueError):
            return _value_text(v)
    return tuple(one(v) for v in values)


def _sort_key(text: Any) -> tuple:
    try:
        return (0, float(text), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(text))


def write_report(sweep_file: Path | str) -> list[Path]:
    """Render the report of ``sweep_file`` to ``report.out`` + ``.md`` (and ``.png`` with ``plot:``); returns the paths."""
    report = Report(sweep_file)
    out = Path(str(report.rep["out"]))
    md = out.with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(report.render())
    made = [md]
    png = report.plot(out.with_suffix(".png"))
    if png:
        made.append(png)
    curve = report.curve_plot(report.curve_path())
    if curve:
        made.append(curve)
    return made
