"""Router accuracy against the cluster ids as a function of t, and its plot (seed 003, Sec. 6.3).

Why: a router p(k | x_t, t) can only be as sharp as the data allow: near the noise end
(t -> 0 here) x_t carries no information about the cluster and accuracy falls to the
largest cluster's share; near the data end (t -> 1) it should approach the accuracy of
classifying clean items.  The curve says where Top-1 routing is a real choice and where it
is a coin flip, which is what the mixing modes trade off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from harness.field.mixture import Router


@torch.no_grad()
def accuracy_curve(router: Router, x1: torch.Tensor, ids: torch.Tensor, ts: Sequence[float], *, seed: int = 0,
                   batch: int = 512) -> list[dict[str, float]]:
    """[{t, accuracy, chance}] for x_t = t x1 + (1 - t) x0, x0 ~ N(0, I) seeded; chance = the largest cluster's share."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    chance = float(torch.bincount(ids, minlength=router.num_experts).max()) / len(ids)
    out = []
    for t in ts:
        correct = 0
        for i in range(0, len(x1), batch):
            xb, nb = x1[i:i + batch], noise[i:i + batch]
            tb = torch.full((len(xb),), float(t), dtype=x1.dtype)
            xt = float(t) * xb + (1 - float(t)) * nb
            correct += int((router.probs(xt, tb).argmax(1) == ids[i:i + batch]).sum())
        out.append({"t": float(t), "accuracy": correct / len(x1), "chance": chance})
    return out


def plot_accuracy_curve(curve: list[dict[str, float]], path: Path, title: str = "router accuracy vs t") -> Path:
    """PNG of accuracy vs t (harness time: 0 noise, 1 data) with the chance level."""
    from harness.core.figures import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([c["t"] for c in curve], [c["accuracy"] for c in curve], marker="o", label="router")
    ax.axhline(curve[0]["chance"], color="grey", ls="--", label="largest cluster share")
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("top-1 accuracy vs cluster id")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return save_png(fig, path, dpi=100)
