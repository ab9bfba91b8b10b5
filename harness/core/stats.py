"""The statistics tables and reports print: mean ± SE, Student-t 95 % intervals, paired differences, Pareto fronts.

One module so that a report and ``harness table`` never disagree on how an interval is computed.
Paired differences are over seeds both sides have (seed 000 Tab. 5 and every mini reproduction
pair cells by ``train.seed``), which removes the seed-to-seed spread the two sides share.
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Optional, Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)); the SE is NaN for a single value."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def ci95(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """(mean, half-width of the 95 % Student-t interval); half-width None for a single value."""
    from scipy import stats

    vals = [float(v) for v in values]
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return mean, float(stats.t.ppf(0.975, len(vals) - 1) * sd / math.sqrt(len(vals)))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int, int]:
    """Mean and SE of a - b over the seeds both have, the number of such seeds, and how many have a < b."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed is common to both sides of the paired difference")
    d = [a[s] - b[s] for s in seeds]
    mu, se = mean_se(d)
    return mu, se, len(d), sum(x < 0 for x in d)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better; ties kept), by x then y.

    Seed 004 Fig. 1 / Tab. 2 compare guidance methods by quality against GFLOPs: both lower is better.
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2 in points)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))
