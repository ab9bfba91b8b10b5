"""The sweep summary figure (issue 19 item 5): mean and 95 % CI over seeds, and quality vs GFLOPs per image."""
from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

from scipy import stats as st

from harness.sweep.summary import plot, summary_figure


def _sweep(grid, plot_spec=None):
    return SimpleNamespace(spec=SimpleNamespace(name="t", grid=grid, plot=plot_spec or {}))


def _rows(ns, seeds, gflops=lambda n: 10.0 * n):
    rows = []
    for n in ns:
        for s in seeds:
            rows.append({"delta": {"method.n": n, "train.seed": s}, "value": 20.0 / n + 0.7 * s * s - 0.1 * n * s,
                         "metric": "fd_raw_100", "gflops": gflops(n), "state": "finished"})
    rows.append({"delta": {"method.n": 9, "train.seed": 0}, "value": None, "metric": None, "gflops": None,
                 "state": "failed"})   # a failed cell is in no panel
    return rows


def _bars(ax):
    """(x, y, half-width) of each point of the axes' first error-bar series."""
    (cont,) = [c for c in ax.containers if hasattr(c, "has_yerr")][:1]
    line, _, (bars,) = cont.lines
    return [(float(x), float(y), float((seg[1][1] - seg[0][1]) / 2))
            for x, y, seg in zip(line.get_xdata(), line.get_ydata(), bars.get_segments())]


def test_several_seeds_give_mean_and_student_t_interval_and_a_cost_panel(tmp_path):
    rows = _rows([1, 2, 4], [0, 1, 2])
    fig, ax = summary_figure(_sweep({"method.n": [1, 2, 4], "train.seed": [0, 1, 2]}), rows)
    assert set(ax) == {"metric", "cost"}
    assert "95 % CI over 3 seeds" in fig._suptitle.get_text()
    for panel, xkey in (("metric", lambda n: n), ("cost", lambda n: 10.0 * n)):
        bars = sorted(_bars(ax[panel]))
        assert len(bars) == 3, panel                                   # one point per setting, seeds pooled
        for (x, y, half), n in zip(bars, [1, 2, 4]):
            vals = [r["value"] for r in rows if r["delta"]["method.n"] == n and r["value"] is not None]
            sd = statistics.stdev(vals)
            assert x == xkey(n) and math.isclose(y, statistics.fmean(vals))
            assert math.isclose(half, st.t.ppf(0.975, 2) * sd / math.sqrt(3), rel_tol=1e-9), (panel, n)
    assert ax["metric"].get_xlabel() == "method.n" and "GFLOPs per image" in ax["cost"].get_xlabel()
    png = plot(_sweep({"method.n": [1, 2, 4], "train.seed": [0, 1, 2]}), rows, tmp_path / "summary.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_one_seed_and_one_cost_give_one_panel_without_intervals():
    rows = _rows([1, 2, 4], [0], gflops=lambda n: 5.0)
    fig, ax = summary_figure(_sweep({"method.n": [1, 2, 4]}), rows)
    assert set(ax) == {"metric"}                                       # the cells do not differ in cost
    assert all(half == 0 for _, _, half in _bars(ax["metric"]))
    assert "one seed per setting" in fig._suptitle.get_text()


def test_a_seed_only_sweep_shows_its_setting_with_an_interval():
    rows = _rows([2], [0, 1, 2, 3])
    fig, ax = summary_figure(_sweep({"train.seed": [0, 1, 2, 3]}), rows)
    ((_, y, half),) = _bars(ax["metric"])
    vals = [r["value"] for r in rows if r["value"] is not None]
    assert math.isclose(y, statistics.fmean(vals)) and half > 0
    assert summary_figure(_sweep({"train.seed": [0]}), [r | {"value": None} for r in rows]) is None
