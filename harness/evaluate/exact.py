"""Metrics against the exact field, for data whose density and velocity are known in closed form (the mixture).

Seed 000 argues from approximation error: the burden of an interval is ∫ m(t) dt over it (Eq. 4), and
CBS places boundaries so that every expert carries the same burden.  On the analytic Gaussian mixture
the learned field can be compared with the exact marginal velocity v*(x, t) = E[x1 − x0 | x_t = x]
(the minimiser of the flow-matching loss), so the premise is measured directly instead of through a
Fréchet distance of 2-D samples, which a Gaussian fit of a bimodal set barely resolves:

* ``velocity_error`` → ``velocity_mse_exact``: ∫₀¹ E_{x_t ~ p_t} ‖v_θ(x_t, t) − v*(x_t, t)‖² / D dt on a fixed
  bank (``T_POINTS`` midpoints t_k, ``X_PER_T`` draws of x_t at each, seeded by ``eval.seed_offset``), and
  ``velocity_burden_max``: the largest per-interval share ∫_{t_{i-1}}^{t_i} of the same integrand over the
  field's own intervals (a :class:`~harness.field.Piecewise`'s boundaries; [0, 1] for one network), the
  min–max objective of Eq. 4 measured on the learned field;
* ``nll`` → ``nll_true_<n>``: the mean −log p_data(x) of the samples under the true mixture (nats), which
  rewards samples in the modes and penalises mass between them.

Both need the dataset's analytic mixture (``dataset.mixture``); other data is a one-line ConfigError.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from harness.core.errors import ConfigError

EXACT_METRICS = ("nll", "velocity_error")
T_POINTS = 64
X_PER_T = 512


def wanted(metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in EXACT_METRICS]


def check_exact_metrics(ev: Mapping[str, Any], dataset) -> None:
    """Before sampling: the exact-field metrics need data with a closed-form density and velocity."""
    asked = wanted(ev["metrics"])
    if asked and getattr(dataset, "mixture", None) is None:
        raise ConfigError(f"eval.metrics: {', '.join(asked)} need data with a closed-form density and velocity "
                          f"(data=gaussian_mixture); {dataset.name} has none",
                          hint="drop them from eval.metrics, or use data=gaussian_mixture")
    if "nll" in asked and ev.get("extractor") != "raw":
        raise ConfigError("eval.metrics: nll scores the samples' coordinates, so it needs eval.extractor=raw",
                          hint="use eval=fd_raw")


def _interval_edges(field) -> list[float]:
    """[0, b_1, ..., 1]: the experts' intervals of a Piecewise field, looked for through wrappers (guidance, EMA)."""
    for _ in range(4):
        inner = getattr(field, "boundaries", None)
        if inner is not None:
            return [0.0, *[float(b) for b in inner], 1.0]
        field = next((getattr(field, a) for a in ("field", "base", "inner") if getattr(field, a, None) is not None), None)
        if field is None:
            break
    return [0.0, 1.0]


@torch.no_grad()
def velocity_error(field, mixture, *, conditional: bool, seed: int = 0, t_points: int = T_POINTS,
                   x_per_t: int = X_PER_T, device: Optional[torch.device] = None) -> dict[str, Any]:
    """Per-t mean squared error against the exact velocity, its integral and the largest per-interval burden."""
    device = device or torch.device("cpu")
    g = torch.Generator().manual_seed(10_000 + int(seed))
    ts = (torch.arange(t_points, dtype=torch.float64) + 0.5) / t_points
    errs = []
    for t in ts.tolist():
        x1, comp = mixture.sample(x_per_t, g)
        x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
        xt = t * x1 + (1 - t) * x0
        tt = torch.full((x_per_t,), t, dtype=torch.float64)
        exact = mixture.exact_velocity_conditional(xt, tt, comp) if conditional else mixture.exact_velocity(xt, tt)
        y = comp.to(device) if conditional else None
        v = field(xt.to(device, torch.float32), tt.to(device, torch.float32), y)
        errs.append(float(((v.double().cpu() - exact.double()) ** 2).sum(dim=1).mean()) / x1.shape[1])
    err = np.asarray(errs)
    edges = _interval_edges(field)
    burdens = [float(err[(ts.numpy() >= lo) & (ts.numpy() < hi)].sum() / t_points) for lo, hi in zip(edges[:-1], edges[1:])]
    return {"velocity_mse_exact": float(err.mean()), "velocity_burden_max": max(burdens),
            "per_t": err.tolist(), "burdens": burdens, "edges": edges}


def exact_metrics(field, dataset, ev: Mapping[str, Any], samples: Optional[np.ndarray],
                  device: Optional[torch.device] = None) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, protocol additions) of the exact-field metrics asked for in ``eval.metrics``
    (:func:`check_exact_metrics` ran before sampling; ``harness validate`` checks the same from the config)."""
    asked = wanted(ev["metrics"])
    if not asked:
        return {}, {}
    mixture = dataset.mixture
    out: dict[str, float] = {}
    proto: dict[str, Any] = {}
    if "velocity_error" in asked:
        r = velocity_error(field, mixture, conditional=dataset.num_classes > 0, seed=int(ev["seed_offset"]), device=device)
        out["velocity_mse_exact"], out["velocity_burden_max"] = r["velocity_mse_exact"], r["velocity_burden_max"]
        proto["velocity_error_bank"] = f"{T_POINTS} midpoints x {X_PER_T} draws of x_t, seed {10_000 + int(ev['seed_offset'])}"
        proto["velocity_error_edges"] = r["edges"]
    if "nll" in asked:
        from harness.evaluate.scoring import n_label

        x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
        out[f"nll_true_{n_label(len(x))}"] = float(-mixture.log_prob(x).mean())
    return out, proto
