"""Complexity monitors m(t) over any Field (seed 000, Sec. 3.1-3.3), each with its estimation cost.

Trajectories: K samples integrated with Euler on a uniform grid of G cells from t = 0 (noise)
to t = 1 (data); sample k uses seed k.  ``grid`` holds the cells' right edges, so the
cumulative monitor at ``grid[j]`` is the burden accumulated on [0, grid[j]].  Noise, labels and probes are
drawn on the CPU (the same bits on every device) and moved to ``device``, where the field's network lives.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import torch

from harness.field import Field
from harness.core.registry import register
from harness.sample import seeded_noise_and_labels


@dataclasses.dataclass
class MonitorCurve:
    monitor: str
    grid: list[float]
    curve: list[float]
    nfe: int          # batched field evaluations (plus JVPs for the Dirichlet monitor)
    seconds: float

    def cost(self) -> dict[str, Any]:
        return {"nfe": self.nfe, "seconds": round(self.seconds, 3)}


def _start(shape, num_classes: int, trajectories: int, seed: int, device: torch.device | str = "cpu"):
    x, y = seeded_noise_and_labels(range(seed, seed + trajectories), shape, num_classes)
    return x.to(device), (y.to(device) if y is not None else None)


@register("monitor", "acceleration")
def path_acceleration(field: Field, *, shape, num_classes: int = 0, trajectories: int = 256, grid: int = 100,
                      seed: int = 0, device: torch.device | str = "cpu") -> MonitorCurve:
    """m(t) = 1/K sum_k ||v_{t+dt}(x^k_{t+dt}) - v_t(x^k_t)|| (seed 000, Eq. 14), on Euler trajectories."""
    t0 = time.perf_counter()
    x, y = _start(shape, num_classes, trajectories, seed, device)
    ts = torch.linspace(0, 1, grid + 1, dtype=torch.float64)
    v = field(x, float(ts[0]), y)
    curve = []
    for j in range(grid):
        x = x + float(ts[j + 1] - ts[j]) * v
        v_next = field(x, float(ts[j + 1]), y)
        curve.append(float((v_next - v).flatten(1).norm(dim=1).mean()))
        v = v_next
    return MonitorCurve("acceleration", ts[1:].tolist(), curve, grid + 1, time.perf_counter() - t0)


@register("monitor", "dirichlet")
def dirichlet_energy(field: Field, *, shape, num_classes: int = 0, trajectories: int = 64, grid: int = 100,
                     seed: int = 0, probes: int = 1, device: torch.device | str = "cpu") -> MonitorCurve:
    """E_D(v_t) ~ 1/K sum_k ||J_v(x^k_t)||_F^2 by Hutchinson: E_z ||J z||^2, z ~ N(0, I) (seed 000, Eq. 8-11).

    JVPs via ``torch.func.jvp`` avoid materialising the d x d Jacobian.
    """
    t0 = time.perf_counter()
    x, y = _start(shape, num_classes, trajectories, seed, device)
    ts = torch.linspace(0, 1, grid + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 10_000)
    curve, nfe = [], 0
    for j in range(grid):
        v = field(x, float(ts[j]), y)
        x = x + float(ts[j + 1] - ts[j]) * v
        t = torch.full((len(x),), float(ts[j + 1]), dtype=x.dtype, device=x.device)
        est = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        for _ in range(probes):
            z = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
            with torch.enable_grad():
                _, jz = torch.func.jvp(lambda xx: field.velocity(xx, t, y), (x,), (z,))
            est += jz.flatten(1).pow(2).sum(1).double()
        curve.append(float(est.mean() / probes))
        nfe += 1 + probes
    return MonitorCurve("dirichlet", ts[1:].tolist(), curve, nfe, time.perf_counter() - t0)


@register("monitor", "loss")
def interpolant_loss(field: Field, *, shape, num_classes: int = 0, trajectories: int = 256, grid: int = 100,
                     seed: int = 0, dataset=None, device: torch.device | str = "cpu") -> MonitorCurve:
    """m(t) = E ||v(x_t, t) - (x1 - x0)||^2 at each cell's midpoint: the loss-/variance-based monitor.

    Not one of seed 000's two monitors (Sec. 3.1-3.2): it is the heuristic they are an
    alternative to (split where the regression is hard).  For the exact field it is the
    conditional variance of the target, E Var[x1 - x0 | x_t] (irreducible loss); for a
    learned field it adds the model's error.  Uses ``trajectories`` data rows (row k drawn
    by seed ``seed``) and fresh noise, the same rows at every t so the curve is smooth.
    """
    if dataset is None:
        raise ValueError("the loss monitor needs data rows (dataset=)")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(dataset), (trajectories,), generator=g)
    x1, y = dataset.get_batch(idx)
    x1 = x1.reshape(trajectories, *shape)
    x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    x1, x0 = x1.to(device), x0.to(device)
    y = y.to(device) if num_classes > 0 else None
    mids = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    curve = []
    for t in mids.tolist():
        xt = t * x1 + (1 - t) * x0
        v = field(xt, t, y)
        curve.append(float((v - (x1 - x0)).flatten(1).pow(2).sum(1).mean()))
    edges = torch.linspace(0, 1, grid + 1, dtype=torch.float64)[1:]
    return MonitorCurve("loss", edges.tolist(), curve, grid, time.perf_counter() - t0)


@register("monitor", "uniform")
def uniform(field: Optional[Field] = None, *, shape=None, num_classes: int = 0, trajectories: int = 0,
            grid: int = 100, seed: int = 0, device: torch.device | str = "cpu") -> MonitorCurve:
    """m(t) = 1: equidistribution then gives the naive uniform split (seed 000's baseline)."""
    ts = torch.linspace(0, 1, grid + 1, dtype=torch.float64)
    return MonitorCurve("uniform", ts[1:].tolist(), [1.0] * grid, 0, 0.0)
