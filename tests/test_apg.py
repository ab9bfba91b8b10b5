"""APG (baselines/apg.py; Sadat et al. 2025, seed 004 Tab. 2): properties of its update on D = x + (1 - t) v."""
from __future__ import annotations

import pytest
import torch

from harness.baselines.apg import ProjectedGuided
from harness.config import compose, validate
from harness.core.errors import ConfigError
from harness.field.guided import Branch, Guided
from tests.test_guidance import batch, net, tiny


def fields(**kw):
    field = net(tiny(seed=0))
    apg = ProjectedGuided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1), 2.5, num_classes=3, **kw)
    cfg = Guided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1), 2.5, num_classes=3)
    return field, apg, cfg


def test_eta_one_without_momentum_or_threshold_is_cfg() -> None:
    _, apg, cfg = fields(eta=1.0, momentum=0.0, norm_threshold=0.0)
    x, t, y = batch()
    with torch.no_grad():
        torch.testing.assert_close(apg(x, t, y), cfg(x, t, y), rtol=1e-5, atol=1e-5)


def test_eta_zero_moves_the_denoised_estimate_orthogonally_to_the_conditional_one() -> None:
    field, apg, cfg = fields(eta=0.0, momentum=0.0, norm_threshold=0.0)
    x, t, y = batch()
    with torch.no_grad():
        s = (1 - t).reshape(-1, 1, 1, 1)
        d_cond, d_apg = x + s * field(x, t, y), x + s * apg(x, t, y)
        step = (d_apg - d_cond).flatten(1)
        cos = (step * d_cond.flatten(1)).sum(1) / (step.norm(dim=1) * d_cond.flatten(1).norm(dim=1))
        assert cos.abs().max() < 1e-4 and step.norm(dim=1).min() > 1e-3        # a real move, orthogonal to D_cond
        assert not torch.allclose(apg(x, t, y), cfg(x, t, y), atol=1e-3)      # and not CFG's


def test_the_norm_threshold_caps_the_update_and_momentum_accumulates_within_a_trajectory() -> None:
    field, apg, _ = fields(eta=1.0, momentum=0.0, norm_threshold=0.01)
    x, t, y = batch()
    with torch.no_grad():
        s = (1 - t).reshape(-1, 1, 1, 1)
        move = (s * (apg(x, t, y) - field(x, t, y))).flatten(1).norm(dim=1)
        assert torch.allclose(move, torch.full_like(move, (2.5 - 1) * 0.01), rtol=1e-4)

    _, apg, _ = fields(eta=1.0, momentum=-0.5, norm_threshold=0.0)
    _, plain, _ = fields(eta=1.0, momentum=0.0, norm_threshold=0.0)
    t1, t2 = torch.full((4,), 0.3), torch.full((4,), 0.6)
    with torch.no_grad():
        d1 = apg(x, t1, y) - plain(x, t1, y)                                 # first call: nothing to remember
        assert d1.abs().max() < 1e-6
        plain(x, t2, y)
        # update_2 = diff_2 + beta diff_1 with diff_k = (1 - t_k)(v_cond - v_null)(t_k) = (1 - t_k)(cfg_k - v_cond_k)/(omega - 1)
        want = plain(x, t2, y) - 0.5 * (1 - 0.3) / (1 - 0.6) * (plain(x, t1, y) - net(tiny(seed=0))(x, t1, y))
        torch.testing.assert_close(apg(x, t2, y), want, rtol=1e-4, atol=1e-4)   # diff_2 + beta diff_1
        restart = apg(x, t1, y) - plain(x, t1, y)                            # t fell: a new trajectory
        assert restart.abs().max() < 1e-6


def test_apg_validates_on_the_mini_setup_and_refuses_bad_options() -> None:
    cfg = validate(compose(["experiment=sg_routing_fmnist_mini", "guidance=apg"]))
    assert cfg["guidance"]["name"] == "apg"
    with pytest.raises(ConfigError, match="guidance.momentum must be in"):
        validate(compose(["experiment=sg_routing_fmnist_mini", "guidance=apg", "guidance.momentum=-1.5"]))
