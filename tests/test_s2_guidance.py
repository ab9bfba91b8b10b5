"""S^2-Guidance (baselines/s2_guidance.py; seed 004 Tab. 2): block dropping and the self-guided combination."""
from __future__ import annotations

import copy

import pytest
import torch

from harness.backbones.block_drop import block_drop, dropped_blocks
from harness.baselines.s2_guidance import SelfGuided
from harness.config import compose, validate
from harness.core.errors import ConfigError
from harness.field.guided import Branch, Guided
from tests.test_guidance import DEPTH, batch, net, tiny


def test_a_dropped_block_is_exactly_a_block_whose_adaln_gates_are_zero() -> None:
    """Skipping block i equals running a copy whose block i has adaLN-Zero gates 0 (the identity on the stream)."""
    model = tiny(selector=None)
    x, t, y = batch()
    gen = torch.Generator().manual_seed(7)
    with block_drop(0.25, torch.Generator().manual_seed(7)):
        skipped = dropped_blocks(DEPTH)
    assert len(skipped) == max(1, round(0.25 * DEPTH))
    identity = copy.deepcopy(model)
    for i in skipped:
        last = identity.blocks[i].adaLN_modulation[-1]
        last.weight.data.zero_()
        last.bias.data.zero_()
    with torch.no_grad(), block_drop(0.25, gen):
        out = model(x, t, y)
    with torch.no_grad():
        torch.testing.assert_close(out, identity(x, t, y), rtol=0, atol=1e-6)
        assert (out - model(x, t, y)).abs().max() > 1e-3             # and the sub-network really differs


def test_sub_scale_zero_is_cfg_and_the_sub_network_is_redrawn_per_step() -> None:
    field = net(tiny(selector=None))
    x, t, y = batch()
    args = (Branch(field, "cond", stream=0), Branch(field, "null", stream=1), Branch(field, "cond", stream=2, drop=0.25))
    cfg = Guided(args[0], args[1], 2.0, num_classes=3)
    with torch.no_grad():
        torch.testing.assert_close(SelfGuided(*args, 2.0, 0.0, num_classes=3)(x, t, y), cfg(x, t, y), rtol=0, atol=0)
        s2 = SelfGuided(*args, 2.0, 0.5, num_classes=3)
        first, second = s2(x, t, y), s2(x, t, y)                     # calls 0 and 1: other dropped blocks
        again = SelfGuided(*args, 2.0, 0.5, num_classes=3)(x, t, y)  # call 0 of a fresh field: the same draw
        assert (first - cfg(x, t, y)).abs().max() > 1e-4
        torch.testing.assert_close(first, again, rtol=0, atol=0)
    draws = set()
    for call in range(8):
        with block_drop(0.25, torch.Generator().manual_seed(call)):
            draws.add(dropped_blocks(DEPTH))
    assert len(draws) > 1


def test_s2_validates_on_a_dit_and_refuses_other_backbones_and_bad_options() -> None:
    cfg = validate(compose(["experiment=sg_routing_fmnist_mini", "guidance=s2"]))
    assert cfg["guidance"]["name"] == "s2"
    with pytest.raises(ConfigError, match="guidance=s2 drops transformer blocks, but backbone=unet"):
        validate(compose(["experiment=mono_fmnist_mini", "guidance=s2", "train.label_dropout=0.1"]))
    with pytest.raises(ConfigError, match=r"guidance.drop must be in \(0, 1\)"):
        validate(compose(["experiment=sg_routing_fmnist_mini", "guidance=s2", "guidance.drop=1.0"]))
