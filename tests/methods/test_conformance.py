"""Every registered method (and the template) passes the conformance suite."""
import importlib

import pytest

from harness.core.registry import registry
from tests.methods.conformance import check_method

EXTRA = {"naive_split": ["method.n=3"], "cbs": ["method.n=3", "split.field=exact", "split.trajectories=32"],
         "ddm": ["method.k=2"], "hetero_ddm": ["method.k=2"],  # k = the 2 classes fake_parts gives every router
         "diffmoe": ["experiment=diffmoe_mini_fmnist", "backbone.depth=2", "backbone.ffn_layers=[1]"],  # needs DiffMoE layers
         "ddpm_init": ["experiment=ddpm_init_fmnist_mini"]}  # a DiT on images (seed 003 Eq. 20 transfers DiT weights)


@pytest.mark.parametrize("name", registry("method").keys())
def test_registered_method_conforms(name):
    check_method(name, EXTRA.get(name, []))


def test_template_conforms():
    importlib.import_module("harness.methods._template")  # registers "_template" (not auto-discovered)
    check_method("_template", ["method.boundary=0.3"])
