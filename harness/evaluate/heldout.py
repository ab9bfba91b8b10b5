"""Held-out flow-matching loss on a fixed bank of (x1, t, x0): the low-variance score of a velocity field.

For any field v, E‖v(x_t, t) − (x1 − x0)‖² = E‖v(x_t, t) − v*(x_t, t)‖² + C, where v* is the exact
marginal velocity and C does not depend on v, so differences of this loss between two models are
differences of their squared velocity error (the quantity seed 000's burden argument is about), with
none of the sampling noise of a Fréchet distance.  The bank is fixed: the first ``HELDOUT_N`` items of
the reference split (never trained on), ``T_POINTS`` midpoint times, noise from one seeded generator,
so every model of a comparison is scored on exactly the same triples (paired by construction).

``eval.metrics: [heldout_fm]`` logs ``fm_loss_heldout_<n>`` (mean over t, per dimension) and, in the
protocol, the per-t curve, so a report can show where in time one model beats another.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

HELDOUT_N = 1000
T_POINTS = 16


@torch.no_grad()
def heldout_fm_loss(field, data, *, n: int = HELDOUT_N, t_points: int = T_POINTS, seed: int = 0,
                    batch_size: int = 500, conditional: bool = True,
                    device: Optional[torch.device] = None) -> dict[str, Any]:
    """Mean per-dimension ‖v(x_t, t, y) − (x1 − x0)‖² over the bank, and its per-t curve."""
    device = device or torch.device("cpu")
    n = min(int(n), len(data))
    ts = (torch.arange(t_points, dtype=torch.float64) + 0.5) / t_points
    g = torch.Generator().manual_seed(20_000 + int(seed))
    per_t = torch.zeros(t_points, dtype=torch.float64)
    for start in range(0, n, batch_size):
        x1, y = data.get_batch(torch.arange(start, min(start + batch_size, n)))
        x1 = x1.float()
        y = y.to(device) if conditional and data.num_classes > 0 else None
        for k, t in enumerate(ts.tolist()):
            x0 = torch.randn(x1.shape, generator=g)
            xt = (t * x1 + (1 - t) * x0).to(device)
            v = field(xt, torch.full((len(x1),), t, device=device), y)
            err = (v.float().cpu() - (x1 - x0)) ** 2
            per_t[k] += float(err.reshape(len(x1), -1).mean(dim=1).sum())
    per_t /= n
    return {"loss": float(per_t.mean()), "per_t": [float(v) for v in per_t], "n": n, "t": ts.tolist()}


def heldout_metrics(field, ev: Mapping[str, Any], reference, device=None) -> tuple[dict[str, float], dict[str, Any]]:
    """``fm_loss_heldout_<n>`` and its protocol on the ``reference`` split, when ``heldout_fm`` is in ``eval.metrics``."""
    if "heldout_fm" not in ev["metrics"]:
        return {}, {}
    from harness.evaluate.scoring import n_label

    r = heldout_fm_loss(field, reference, seed=int(ev["seed_offset"]), device=device, batch_size=int(ev["batch_size"]))
    proto = {"heldout_fm_bank": f"first {r['n']} items of the reference split x {T_POINTS} midpoint t, "
                                f"noise seed {20_000 + int(ev['seed_offset'])}",
             "heldout_fm_per_t": [round(v, 6) for v in r["per_t"]]}
    return {f"fm_loss_heldout_{n_label(r['n'])}": r["loss"]}, proto
