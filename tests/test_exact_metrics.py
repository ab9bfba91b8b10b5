"""Exact-field metrics on the analytic mixture (harness/evaluate/exact.py): the velocity error and its
per-interval burdens against v*, and the NLL of samples under the true density."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.core.errors import ConfigError
from harness.data.gaussian_mixture import GaussianMixture
from harness.evaluate.exact import exact_metrics, velocity_error
from harness.field import Exact, Piecewise

MIX = GaussianMixture([[-2.0, 0.0], [2.0, 1.0]], [0.3, 0.5], [0.4, 0.6])


def _exact(offset=(0.0, 0.0)):
    c = torch.tensor(offset)
    return Exact(lambda x, t, y=None: MIX.exact_velocity(x, t) + c.to(x.dtype))


def test_the_exact_field_has_no_error_and_a_constant_offset_costs_its_square():
    assert velocity_error(_exact(), MIX, conditional=False, t_points=16, x_per_t=64)["velocity_mse_exact"] < 1e-10
    r = velocity_error(_exact((0.3, -0.4)), MIX, conditional=False, t_points=16, x_per_t=64)
    assert r["velocity_mse_exact"] == pytest.approx((0.3 ** 2 + 0.4 ** 2) / 2, rel=1e-5)   # per dimension


def test_burdens_are_the_integral_over_each_expert_interval():
    # expert 0 exact on [0, 0.25), expert 1 off by (1, 1) on [0.25, 1]: burden 0 and 0.75 * 1
    field = Piecewise([_exact(), _exact((1.0, 1.0))], [0.25])
    r = velocity_error(field, MIX, conditional=False, t_points=32, x_per_t=32)
    assert r["edges"] == [0.0, 0.25, 1.0]
    assert r["burdens"][0] < 1e-10
    assert r["burdens"][1] == pytest.approx(0.75, rel=1e-5)
    assert r["velocity_burden_max"] == pytest.approx(sum(r["burdens"]), rel=1e-9)
    assert r["velocity_mse_exact"] == pytest.approx(sum(r["burdens"]), rel=1e-9)


def test_nll_is_the_mean_negative_log_density_of_the_mixture():
    x = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, 0.5]])

    def log_normal(p, mu, s):
        return -((p - np.asarray(mu)) ** 2).sum() / (2 * s * s) - math.log(2 * math.pi * s * s)

    want = -np.mean([math.log(0.4 * math.exp(log_normal(p, [-2, 0], 0.3)) + 0.6 * math.exp(log_normal(p, [2, 1], 0.5)))
                     for p in x])

    class Data:
        mixture, num_classes, name = MIX, 0, "gaussian_mixture"

    ev = {"metrics": ["nll"], "extractor": "raw", "seed_offset": 0}
    out, _ = exact_metrics(_exact(), Data(), ev, x)
    assert out["nll_true_3"] == pytest.approx(want, rel=1e-9)


def test_exact_metrics_on_data_without_a_closed_form_are_a_validation_error():
    from harness.config import load

    with pytest.raises(ConfigError, match="eval.metrics: velocity_error need data with a closed-form"):
        load(["eval.metrics=[fd,velocity_error]"])            # the default job's Fashion-MNIST
    load(["experiment=gmm_mini", "eval.metrics=[fd,velocity_error,nll]"])   # the mixture has one
    with pytest.raises(ConfigError, match="nll scores the samples' coordinates, so it needs eval.extractor=raw"):
        load(["experiment=gmm_mini", "eval=fd_smallcnn", "eval.metrics=[fd,nll]"])


def test_heldout_loss_differences_are_squared_velocity_errors():
    """E‖v − u‖² = E‖v − v*‖² + C: an offset c on the exact field adds |c|²/D (the cross term averages out)."""
    from harness.data.base import ArrayDataset
    from harness.evaluate.heldout import heldout_fm_loss

    x, y = MIX.sample(1000, torch.Generator().manual_seed(3))
    data = ArrayDataset(x, y, num_classes=0, name="gaussian_mixture", kind="vector", info={})
    exact = heldout_fm_loss(_exact(), data, conditional=False)
    again = heldout_fm_loss(_exact(), data, conditional=False)
    off = heldout_fm_loss(_exact((0.3, -0.4)), data, conditional=False)
    assert exact["loss"] == again["loss"]                            # one fixed bank: paired by construction
    assert off["loss"] - exact["loss"] == pytest.approx((0.3 ** 2 + 0.4 ** 2) / 2, rel=0.1)
    assert exact["loss"] > 0.1                                       # C > 0: the loss never reaches zero
