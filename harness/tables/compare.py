"""Paper numbers beside ours: match runs to table cells, aggregate over seeds, label scale and protocol.

A paper entry's ``match`` names config keys (MLflow params) or ``tags.*`` our run must carry; its
``paper_scale`` names the further keys that make a run paper scale (else it is ``mini``).  The
``ours`` column is computed from our runs only: a cell without runs shows ``missing``, never the
paper's number.  Over several seeds (param ``train.seed``) a cell is ``mean ± half-width`` of the
95 % Student-t interval (STYLE practice 8: value, n and CI side by side).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from harness.core.stats import ci95
from harness.tables.paper import PaperEntry, PaperTable

MISSING = "missing"
SEED_PARAM = "params.train.seed"
# paper metric -> regexes of our MLflow metric names, in order of preference.  A number is FID only
# from the Inception-V3 extractor (fid_inception_*); the CPU-scale stand-ins keep their own names.
OUR_METRICS: dict[str, tuple[str, ...]] = {
    "fid": (r"fid_adm_\w+", r"fid_inception_\w+", r"fd_cnn_\w+", r"fd_smallcnn_\w+", r"fd_raw_\w+"),
    "sfid": (r"sfid_adm_\w+",),
    "lpips": (r"lpips_div_\w+", r"div_\w+"),
    "is": (r"is_adm_\w+", r"is_inception_\w+", r"is_smallcnn_\w+"),
    "precision": (r"precision_adm_\w+", r"precision_inception_\w+", r"precision_cnn_\w+", r"precision_smallcnn_\w+", r"precision_raw_\w+"),
    "recall": (r"recall_adm_\w+", r"recall_inception_\w+", r"recall_cnn_\w+", r"recall_smallcnn_\w+", r"recall_raw_\w+"),
    "gflops": (r"gflops_per_nfe_seed004", r"gflops_per_nfe_torch", r"gflops_per_nfe"),
}
PROTOCOL_OF = {"fid_adm": "FID (ADM evaluator protocol, Inception-V3 pool_3)", "sfid_adm": "sFID (ADM evaluator, mixed_6/conv[:7])",
               "is_adm": "IS (ADM evaluator, 5000-sample splits)", "precision_adm": "precision (ADM evaluator, k=3)",
               "recall_adm": "recall (ADM evaluator, k=3)", "fid_inception": "FID (Inception-V3 pool3)", "fd_smallcnn": "FD (smallcnn features)",
               "fd_cnn": "FD (features of a small CNN trained as a classifier)",
               "lpips_div": "mean pairwise LPIPS-Alex v0.1", "div": "mean pairwise cosine distance of features (not LPIPS)",
               "fd_raw": "FD (raw coordinates)", "is_inception": "IS (Inception-V3)",
               "gflops_per_nfe_seed004": "GFLOPs per NFE (linear+conv multiply-adds, seed 004's count)",
               "gflops_per_nfe_torch": "GFLOPs per NFE (FlopCounterMode, 2 per multiply-add)", "gflops_per_nfe": "GFLOPs per NFE"}
# params that describe a group of our runs in the table (besides the metric)
SCALE_KEYS = ("data.name", "backbone.name")


def param_text(value: Any) -> str:
    """Params are stored as str(python value): compare numbers as numbers, bools and None by name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    try:
        f = float(text)
        return repr(f) if math.isfinite(f) else text.lower()
    except ValueError:
        return text.lower()


def _column(key: str) -> str:
    return key if key.startswith(("tags.", "params.", "metrics.")) else f"params.{key}"


def match_mask(runs: pd.DataFrame, match: Optional[Mapping[str, Any]]) -> pd.Series:
    """Runs that carry every ``key: value`` of ``match``; ``value: null`` means absent or null."""
    if match is None or runs.empty:
        return pd.Series(False, index=runs.index)
    mask = pd.Series(True, index=runs.index)
    for key, want in match.items():
        col = _column(key)
        have = runs[col] if col in runs else pd.Series(None, index=runs.index, dtype=object)
        if want is None:
            mask &= have.isna() | have.map(lambda v: param_text(v) in ("none", "null", ""))
        else:
            mask &= have.notna() & have.map(lambda v: param_text(v) == param_text(want))
    return mask


def format_value(mean: float, half: Optional[float], n: int) -> str:
    """'12.3 ± 0.4' (n ≥ 2) or '12.3' (n = 1), 4 significant digits."""
    return f"{mean:.4g}" if half is None else f"{mean:.4g} ± {half:.2g}"


def metric_columns(runs: pd.DataFrame, metric: str) -> list[str]:
    """Our metric columns that stand for the paper's ``metric`` (empty when we have none)."""
    out = []
    for pattern in OUR_METRICS.get(metric, ()):
        out += sorted(c for c in runs.columns if c.startswith("metrics.") and re.fullmatch(pattern, c[len("metrics."):]))
    return out


def metric_protocol(name: str) -> str:
    """What a metric name means, e.g. 'fd_smallcnn_256' -> 'FD (smallcnn features), n=256'."""
    for prefix, label in sorted(PROTOCOL_OF.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix):
            rest = name[len(prefix):].strip("_")
            return f"{label}, n={rest}" if rest else label
    return name


def scale_of(run: Mapping[str, Any], paper_scale: Mapping[str, Any]) -> str:
    """'paper' when the run carries every ``paper_scale`` key (and there is one), else 'mini (<data>, <backbone>)'."""
    if paper_scale and bool(match_mask(pd.DataFrame([run]), paper_scale).iloc[0]):
        return "paper"
    parts = [str(run.get(f"params.{k}")) for k in SCALE_KEYS if isinstance(run.get(f"params.{k}"), str)]
    return f"mini ({', '.join(parts)})" if parts else "mini"


def latest_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per seed (the newest finished one), so a re-run does not count twice."""
    if runs.empty:
        return runs
    runs = runs.sort_values("start_time")
    seed = runs[SEED_PARAM] if SEED_PARAM in runs else pd.Series("0", index=runs.index)
    return runs.assign(_seed=seed.fillna("0")).drop_duplicates("_seed", keep="last").drop(columns="_seed")


def ours_for_entry(entry: PaperEntry, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Our cells for one paper entry: one dict per (scale, metric name), or one 'missing' cell."""
    missing = {"ours": MISSING, "ours_n": 0, "ours_scale": "", "ours_metric": "", "ours_protocol": "", "ours_runs": ""}
    if runs.empty or entry.match is None:
        return [missing]
    finished = runs[runs["status"] == "FINISHED"] if "status" in runs else runs
    hits = finished[match_mask(finished, entry.match)]
    cells = []
    for col in metric_columns(hits, entry.metric):
        with_metric = hits[hits[col].notna()]
        if with_metric.empty:
            continue
        scales = with_metric.apply(lambda r: scale_of(r.to_dict(), entry.paper_scale), axis=1)
        for scale, group in with_metric.groupby(scales, sort=True):
            if scale != "paper":
                # a CPU twin fills a paper row only when the row names it (``mini_scale``): a mini number is
                # never set beside a paper number because it happens to match the row's method keys
                if not entry.mini_scale:
                    continue
                group = group[match_mask(group, entry.mini_scale)]
                if group.empty:
                    continue
            group = latest_per_seed(group)
            mean, half = ci95(group[col].tolist())
            name = col[len("metrics."):]
            nfe = sorted(set(group.get("params.protocol.nfe", pd.Series(dtype=object)).dropna().astype(str)))
            proto = metric_protocol(name) + (f", NFE {'/'.join(nfe)}" if nfe else "")
            cells.append({"ours": format_value(mean, half, len(group)), "ours_n": len(group), "ours_scale": scale,
                          "ours_metric": name, "ours_protocol": proto, "ours_runs": ",".join(group["run_id"])})
    return cells or [missing]


def _paper_protocol(entry: PaperEntry) -> str:
    p = entry.protocol
    keys = ("metric", "samples", "sampler", "nfe", "cfg_scale", "training_steps", "training_epochs", "steps")
    return "; ".join(f"{k}: {p[k]}" for k in keys if k in p)


def paper_vs_ours(tables: Iterable[PaperTable], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (paper entry, group of our runs): the paper's value and protocol beside ours."""
    rows = []
    for t in tables:
        if not t.entries:
            rows.append({"table_id": t.id, "table": t.table, "row": f"(no numbers: {t.status})", "column": "", "metric": "",
                         "paper": "", "paper_setting": "", "paper_protocol": t.note, "ours": MISSING, "ours_n": 0, "ours_scale": "",
                         "ours_metric": "", "ours_protocol": "", "ours_runs": "", "seed_ref": f"{t.seed_file}"})
            continue
        for e in t.entries:
            for cell in ours_for_entry(e, runs):
                own = "; ".join(f"{k}: {v}" for k, v in e.protocol.items() if t.protocol.get(k) != v)
                rows.append({"table_id": t.id, "table": t.table, "row": e.row, "column": e.column, "metric": e.metric,
                             "paper": e.value, "paper_setting": own, "paper_protocol": _paper_protocol(e), **cell,
                             "seed_ref": f"{e.seed_file}:{e.seed_line}"})
    return pd.DataFrame(rows)


def _fid50k(run: Mapping[str, Any]) -> bool:
    """A run scored like the papers: Inception-V3 features (ours or the ADM suite's), at least 50k samples."""
    try:
        return run.get("params.eval.extractor") in ("inception_v3", "adm_inception") and int(run.get("params.eval.n_samples") or 0) >= 50000
    except ValueError:
        return False


# params that cannot change a result (names, paths, the store, the launcher): never a "varied key"
BOOKKEEPING_PARAMS = ("params.run.", "params.paths.", "params.tracking.", "params.launcher.", "params.protocol.",
                      "params.dist.")
COST_METRICS = ("gflops_per_image", "gflops_per_image_seed004")   # the cost column, first one a run has


def varying_params(runs: pd.DataFrame, ignore: Sequence[str] = ("params.train.seed",)) -> list[str]:
    """Param columns whose value differs between runs: what a sweep varied (bookkeeping params excluded)."""
    cols = [c for c in runs.columns if c.startswith("params.") and c not in ignore and not c.startswith(BOOKKEEPING_PARAMS)]
    return [c for c in cols if runs[c].astype(str).nunique(dropna=False) > 1]


def choose_metric(runs: pd.DataFrame, wanted: Optional[str] = None) -> Optional[str]:
    """The metric a reader compares (a name without ``metrics.``): ``wanted`` exactly, else the first metric
    named ``<wanted>_*``, else the quality metric (FID on Inception-V3 first, then the FD stand-ins)."""
    have = sorted(c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any())
    if wanted:
        if wanted in have:
            return wanted
        hit = next((m for m in have if m.startswith(f"{wanted}_")), None)
        if hit:
            return hit
    cols = [c for c in metric_columns(runs, "fid") if runs[c].notna().any()]
    return cols[0][len("metrics."):] if cols else None


def runs_table(runs: pd.DataFrame, metric: Optional[str] = None) -> pd.DataFrame:
    """A sweep or experiment as a table: one row per setting of the varied params, mean ± 95 % CI over seeds.

    Every column is in the frame; ``attrs["default"]`` lists what a reader compares (the varied keys, the
    metric ``metric`` or :func:`choose_metric`'s, ``n_seeds``, the cost in GFLOPs per image), in priority order.
    """
    if runs.empty:
        return pd.DataFrame()
    finished = runs[runs["status"] == "FINISHED"] if "status" in runs else runs
    keys = varying_params(finished) or []
    metrics = sorted(c for c in finished.columns if c.startswith("metrics.") and finished[c].notna().any()
                     and not c.startswith(("metrics.train_", "metrics.boundary_")))
    chosen = choose_metric(finished, metric)
    cost = next((m for m in COST_METRICS if f"metrics.{m}" in metrics), None)
    rows = []
    groups = finished.groupby(keys, dropna=False, sort=True) if keys else [((), finished)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        group = latest_per_seed(group)
        row = {k[len("params."):]: v for k, v in zip(keys, values)}
        row["n_seeds"] = len(group)
        first = group.iloc[0].to_dict()
        row["scale"] = "paper (FID-50K protocol)" if _fid50k(first) else scale_of(first, {})
        for m in metrics:
            vals = group[m].dropna().tolist()
            row[m[len("metrics."):]] = format_value(*ci95(vals), len(vals)) if vals else MISSING
        row["runs"] = ",".join(group["run_id"])
        rows.append(row)
    table = pd.DataFrame(rows)
    lead = [k[len("params."):] for k in keys] + [c for c in (chosen, "n_seeds", cost) if c]
    table = table[lead + [c for c in table.columns if c not in lead]]
    table.attrs["default"] = lead
    return table
