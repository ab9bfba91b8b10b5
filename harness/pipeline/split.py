"""``harness split``: monitor curve and equidistributed boundaries for a config (seed 000, Sec. 3.3).

``split.field=exact`` uses the closed-form velocity of the analytic Gaussian mixture, so
boundaries need no training; ``split.field=aux`` trains (or reuses, by content hash) the
auxiliary model on ``split.aux_fraction`` of the data with the run's objective and uses it.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.core import dist
from harness.core.errors import ConfigError
from harness.core.files import write_json_atomic
from harness.core.hashing import content_hash
from harness.core.registry import get
from harness.data.cache import DatasetCache
from harness.field.base import Exact, Net
from harness.pipeline.training import train_units
from harness.split.equidistribution import boundaries_from_monitor
from harness.train import load_unit_field_parts
from harness.train.units import unit_from_config


def aux_unit(cfg: Mapping[str, Any]):
    """The auxiliary model's unit: the run's objective on a data fraction with its own step budget.

    Its backbone is ``split.aux_backbone`` when set (seed 000 Sec. 4.5: a SiT-S/2 on 10 % of the data
    for 50K steps gives the same boundaries as a fully trained SiT-XL/2), else the experts' own.
    """
    s = cfg["split"]
    data = dict(cfg["data"], subset_fraction=float(s["aux_fraction"]), subset_seed=int(s["seed"]))
    steps = int(s["aux_steps"] or cfg["train"]["steps"])
    backbone = dict(s.get("aux_backbone") or cfg["backbone"])
    return unit_from_config(dict(cfg, data=data, backbone=backbone), label=f"aux ({s['aux_fraction']:.0%} data)",
                            steps=steps)


def mixture_field(mixture, num_classes: int):
    """The exact velocity the experts learn: per component when labelled (class-conditional data), else the mixture's.

    A conditional model sees y = component, so its field is that component's Gaussian field; the
    null class (label dropout, y = K) and unlabelled data get the unconditional mixture field.
    """
    K = mixture.num_components

    def fn(x, t, y):
        out = mixture.exact_velocity(x, t)
        if y is not None and num_classes > 0:
            sel = (y < K).nonzero(as_tuple=True)[0]   # y = K is the null class: unconditional field
            if sel.numel():
                out[sel] = mixture.exact_velocity_conditional(x[sel], t[sel], y[sel]).reshape(out[sel].shape)
        return out.to(x.dtype)

    return fn


def split_field(cfg: Mapping[str, Any], datasets, tracker=None, parent_id: Optional[str] = None):
    """(field, num_classes used for trajectories, aux unit hash or None)."""
    s = cfg["split"]
    data = datasets.get(cfg["data"])
    if s["field"] == "exact":
        mixture = getattr(data, "mixture", None)
        if mixture is None:
            raise ConfigError(f"split.field=exact needs data with a closed-form velocity; {cfg['data']['name']} has none",
                              hint="use data=gaussian_mixture, or split.field=aux")
        return Exact(mixture_field(mixture, data.num_classes)), data.num_classes, None
    spec = aux_unit(cfg)
    train_units({"aux": spec}, cfg, tracker=tracker, parent_id=parent_id, datasets=datasets)
    model, objective, _ = load_unit_field_parts(spec, Path(cfg["paths"]["workdir"]), device=str(split_device(cfg)))
    return Net(model, objective), data.num_classes, spec.hash


def split_device(cfg: Mapping[str, Any]) -> torch.device:
    """Where the monitor runs the aux field: ``eval.device`` (auto: this process's GPU), as sampling does."""
    return dist.resolve_device(cfg["eval"].get("device", "auto"))


def _check_curve(curve, monitor: str) -> None:
    """A zero or non-finite curve is an error, never a silent fall-back to the naive split."""
    bad = [i for i, v in enumerate(curve) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"split.monitor={monitor}: the monitor curve is not finite at grid cells {bad[:5]}",
                          hint="the aux model diverged or the field is singular there; check the aux unit's loss")
    if not any(v > 0 for v in curve):
        raise ConfigError(f"split.monitor={monitor}: the monitor curve is zero everywhere, so no boundary is defined",
                          hint="the aux model may be untrained (aux_steps=0?) or constant")


def compute_split(cfg: Mapping[str, Any], *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> dict[str, Any]:
    """{monitor, n, grid, curve, cumulative, boundaries, cost, field, aux_unit}."""
    datasets = datasets or DatasetCache()
    field, num_classes, aux_hash = split_field(cfg, datasets, tracker, parent_id)
    return split_of_field(cfg, field, num_classes, aux_hash, datasets.get(cfg["data"]))


def split_of_field(cfg: Mapping[str, Any], field, num_classes: int, aux_hash: Optional[str], data) -> dict[str, Any]:
    """The monitor curve of ``field`` and its equidistributed boundaries (seed 000, Eq. 14-16)."""
    s = cfg["split"]
    monitor = get("monitor", s["monitor"])
    extra = {"dataset": data} if "dataset" in inspect.signature(monitor).parameters else {}
    device = split_device(cfg) if s["field"] != "exact" else torch.device("cpu")   # the exact field is numpy-side CPU
    curve = monitor(field, shape=tuple(data.shape), num_classes=num_classes, trajectories=int(s["trajectories"]),
                    grid=int(s["grid"]), seed=int(s["seed"]), device=device, **extra)
    _check_curve(curve.curve, s["monitor"])
    boundaries = boundaries_from_monitor(curve.grid, curve.curve, int(s["n"]), interpolate=bool(s["interpolate"]))
    return {"monitor": s["monitor"], "n": int(s["n"]), "grid": curve.grid, "curve": curve.curve,
            "cumulative": np.cumsum(curve.curve).tolist(), "boundaries": boundaries, "cost": curve.cost(),
            "field": s["field"], "aux_unit": aux_hash}


def split_figure(result: Mapping[str, Any]):
    """Two panels: the monitor m(t) with the boundaries, and seed 000 Fig. 2's cumulative monitor
    (normalised to 1 at t = 1) with the equal-burden levels i / N whose crossings are the boundaries (Eq. 16)."""
    from harness.core.figures import pyplot

    plt = pyplot()
    grid = np.asarray(result["grid"], dtype=float)
    cum = np.asarray(result.get("cumulative") or np.cumsum(result["curve"]), dtype=float)
    cum = cum / cum[-1] if cum[-1] > 0 else cum
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=120)
    ax.plot(grid, result["curve"], lw=1.5, label=f"m(t): {result['monitor']}")
    ax2.plot(np.concatenate([[0.0], grid]), np.concatenate([[0.0], cum]), lw=1.5, color="C0",
             label="cumulative monitor / total")
    n = int(result["n"])
    for i in range(1, n):
        ax2.axhline(i / n, color="0.6", ls=":", lw=1, label="equal burden i / N" if i == 1 else None)
    for a in (ax, ax2):
        for i, b in enumerate(result["boundaries"]):
            a.axvline(b, color="C3", ls="--", lw=1, label="boundaries" if i == 0 else None)
    for b in result["boundaries"]:
        ax.text(b, ax.get_ylim()[1], f" {b:.3f}", color="C3", va="top", fontsize=8)
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("monitor")
    ax.set_title(f"N = {n}, field = {result['field']}")
    ax.legend(fontsize=8, loc="upper left")
    ax2.set_xlabel("t (0 = noise, 1 = data)")
    ax2.set_ylabel("cumulative (normalised)")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("cumulative burden (seed 000 Fig. 2)")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_split(result: Mapping[str, Any], path: Path) -> Path:
    """PNG of :func:`split_figure`."""
    from harness.core.figures import save_png

    return save_png(split_figure(result), path)


# split keys that change the result; the field is named by the aux unit's hash (unit hash rules:
# logging and checkpoint cadence do not count) or "exact", and the data node is always part of it
SPLIT_RESULT_KEYS = ("monitor", "n", "grid", "trajectories", "interpolate", "seed")
SPLIT_KEY_VERSION = 1


def split_key(cfg: Mapping[str, Any]) -> str:
    """The one content key of a split result, shared by ``harness split`` and ``method=cbs``."""
    s = cfg["split"]
    field = aux_unit(cfg).hash if s["field"] == "aux" else "exact"
    return content_hash({"version": SPLIT_KEY_VERSION, "data": cfg["data"], "field": field,
                         **{k: s[k] for k in SPLIT_RESULT_KEYS}})


def split_dir(cfg: Mapping[str, Any]) -> Path:
    """``<workdir>/splits/<split_key>/``: split.json (and monitor.png once plotted)."""
    return Path(cfg["paths"]["workdir"]) / "splits" / split_key(cfg)


def cached_split(cfg: Mapping[str, Any], *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> dict[str, Any]:
    """The split result of ``cfg``: read from its folder, or computed (training the aux unit if needed) and stored.

    Collective under ``torch.distributed``: every rank trains the aux unit's DDP steps; rank 0 alone
    computes the monitor and writes the result, the other ranks read it, so all agree on the boundaries.
    """
    path = split_dir(cfg) / "split.json"
    if not dist.broadcast(path.exists()):
        datasets = datasets or DatasetCache()
        field, num_classes, aux_hash = split_field(cfg, datasets, tracker, parent_id)
        with dist.main_first() as main:
            if main:
                write_json_atomic(path, split_of_field(cfg, field, num_classes, aux_hash, datasets.get(cfg["data"])))
    return json.loads(path.read_text())


def run_split(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Compute (or reuse), plot, and record the split as an MLflow run (params, curve JSON, PNG).

    Collective under ``torch.distributed`` (the aux unit trains on every rank); rank 0 records.
    """
    from harness.track import Tracker, flatten, git_info

    main = dist.is_main()
    tracker = Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"]) if main else None
    run_id = tracker.start_run(f"split-{cfg['split']['monitor']}-n{cfg['split']['n']}",
                               tags={"harness.kind": "split", **git_info()}, params=flatten(cfg)) if main else None
    run_id = dist.broadcast(run_id)
    try:
        result = cached_split(cfg, tracker=tracker, parent_id=run_id)
    except BaseException:
        if main:
            tracker.end_run(run_id, status="FAILED")
        raise
    if not main:
        return dict(result, run_id=run_id)
    png = plot_split(result, split_dir(cfg) / "monitor.png")
    tracker.log_dict(run_id, result, "split.json")
    tracker.log_artifact(run_id, png, "plots")
    tracker.log_metrics(run_id, {f"boundary_{i}": b for i, b in enumerate(result["boundaries"])})
    tracker.end_run(run_id)
    return dict(result, png=str(png), run_id=run_id)
