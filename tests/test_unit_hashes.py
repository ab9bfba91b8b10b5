"""Unit hashes are the identity of trained weights: a refactor must not change them.

The values below were computed by the code before the layering refactor (issue 17) for these
configs; a change here means every user's finished units would silently stop being reused.  If the
trainer's arithmetic really changes, bump ``HASH_VERSION`` and update the pins in the same commit.
"""
from __future__ import annotations

import pytest

from harness.pipeline.assemble import experiment_units, method_for
from harness.pipeline.split import aux_unit
from tests.configs import load_in

PINNED = {
    (): {"model": "b24e5414ba94ed36"},
    ("experiment=naive3_fmnist_mini",): {"expert0": "22a959c9f762f789", "expert1": "0d5ab01d1b07810c",
                                         "expert2": "d3e289919ca9eaf4"},
    ("method=cbs", "method.boundaries=[0.4,0.77]"): {"expert0": "af3856e274300ee8", "expert1": "18c5b99eb4b737df",
                                                     "expert2": "180c2a56fea04fd0"},
    ("method=cbs", "method.boundaries=[0.4,0.77]", "method.training=joint"): {"experts": "f5782e71f7748da6"},
    ("experiment=sg_routing_fmnist_mini", "guidance=autoguidance", "guidance.weak_steps=100"):
        {"model": "25d7319a7b16720c", "guidance/weak": "65d5707333b8907a"},
    ("experiment=diffmoe_mini_fmnist",): {"model": "f75ca96a6a0ce4be"},
    ("experiment=sit_xl2_imagenet256", "data.root=/tmp"): {"model": "db36148496e245a7"},
}


@pytest.mark.parametrize("overrides", list(PINNED), ids=lambda o: " ".join(o) or "default")
def test_unit_hashes_are_unchanged(tmp_path, overrides):
    cfg = load_in(tmp_path, *overrides)
    units = experiment_units(cfg, method_for(cfg, prepare=False))
    assert {role: spec.hash for role, spec in units.items()} == PINNED[overrides]


def test_cbs_aux_unit_hash_is_unchanged(tmp_path):
    assert aux_unit(load_in(tmp_path, "method=cbs")).hash == "7bfe6348dfe52ba7"
