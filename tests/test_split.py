"""CBS building blocks (seed 000, Sec. 3.3): equidistribution, monitors against closed forms, `harness split`."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.gaussian_mixture import GaussianMixture
from harness.errors import ConfigError
from harness.field import Exact
from harness.registry import get
from harness.split import boundaries_from_monitor

HARNESS = str(Path(sys.executable).with_name("harness"))


def test_equidistribution_on_analytic_curves():
    g = np.linspace(0, 1, 20001)[1:]
    # m(t) = t: cumulative t^2 / 2, so boundaries are sqrt(i / N)
    b = boundaries_from_monitor(g, g * (g[1] - g[0]), 4)
    assert np.allclose(b, [math.sqrt(i / 4) for i in (1, 2, 3)], atol=1e-4)
    assert boundaries_from_monitor(np.linspace(0, 1, 101)[1:], np.ones(100), 4) == pytest.approx([0.25, 0.5, 0.75])
    coarse = np.linspace(0, 1, 11)[1:]
    assert boundaries_from_monitor(coarse, np.ones(10), 3) == pytest.approx([0.3, 0.7])  # grid points, nearest
    assert boundaries_from_monitor(coarse, np.ones(10), 3, interpolate=True) == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("n,curve,msg", [(0, None, "split.n must be >= 1"), (3, "neg", ">= 0"), (11, None, "too fine")])
def test_equidistribution_errors(n, curve, msg):
    g = np.linspace(0, 1, 11)[1:]
    m = -np.ones(10) if curve == "neg" else np.ones(10)
    with pytest.raises(ConfigError, match=msg):
        boundaries_from_monitor(g, m, n)


def test_acceleration_monitor_matches_the_closed_form_for_a_gaussian():
    """Data N(mu, s^2): x_t = t mu + sigma(t) z with sigma = sqrt(t^2 s^2 + (1-t)^2), v = mu + sigma'(t) z,
    so Eq. 14 is E||z|| |sigma'(t + dt) - sigma'(t)| up to the Euler trajectories' error."""
    mu, s, d, grid = 1.0, 0.2, 8, 400
    gm = GaussianMixture([[mu] * d], [s], [1.0])
    field = Exact(lambda x, t, y: gm.exact_velocity(x, t))
    torch.set_default_dtype(torch.float64)
    try:
        res = get("monitor", "acceleration")(field, shape=(d,), trajectories=512, grid=grid, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    t = np.linspace(0, 1, grid + 1)
    dsig = (t * s**2 - (1 - t)) / np.sqrt(t**2 * s**2 + (1 - t) ** 2)
    from harness.sample import seeded_noise_and_labels

    z, _ = seeded_noise_and_labels(range(512), (d,), 0)
    analytic = float(z.norm(dim=1).mean()) * np.abs(np.diff(dsig))
    assert np.allclose(res.curve, analytic, rtol=0.03, atol=1e-6)
    for n in (2, 3, 4):
        assert np.allclose(boundaries_from_monitor(res.grid, res.curve, n), boundaries_from_monitor(res.grid, analytic, n), atol=1.5 / grid)
    assert res.nfe == grid + 1


def test_dirichlet_monitor_of_a_linear_field_is_its_frobenius_norm():
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    field = Exact(lambda x, t, y: x @ a.T)
    res = get("monitor", "dirichlet")(field, shape=(6,), trajectories=2000, grid=5, seed=0)
    assert np.allclose(res.curve, float((a**2).sum()), rtol=0.08)


def test_uniform_monitor_gives_the_naive_split():
    res = get("monitor", "uniform")(None, grid=100)
    assert boundaries_from_monitor(res.grid, res.curve, 3, interpolate=True) == pytest.approx([1 / 3, 2 / 3])


def _split(tmp_path, *args):
    env = dict(os.environ, HARNESS_WORKDIR=str(tmp_path))
    out = subprocess.run([HARNESS, "split", "data=gaussian_mixture", "eval=fd_raw", "backbone=mlp_tiny", *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_harness_split_exact_is_deterministic_and_plots(tmp_path):
    a = _split(tmp_path, "split.field=exact", "split.n=3")
    b = _split(tmp_path, "split.field=exact", "split.n=3")
    assert a["boundaries"] == b["boundaries"] and len(a["boundaries"]) == 2
    assert len(a["grid"]) == len(a["curve"]) == len(a["cumulative"]) == 100
    assert Path(a["png"]).stat().st_size > 1000 and a["aux_unit"] is None
    c = _split(tmp_path, "split.field=exact", "split.n=3", "data.means=[[-3.0,0.0],[3.0,0.0]]", "data.stds=[0.1,0.1]")
    assert c["boundaries"] != a["boundaries"]  # mixture parameters by override change the boundaries


def test_harness_split_with_aux_model_reuses_its_unit(tmp_path):
    a = _split(tmp_path, "split.aux_steps=60", "split.trajectories=64", "train.batch_size=128")
    b = _split(tmp_path, "split.aux_steps=60", "split.trajectories=64", "train.batch_size=128")
    assert a["aux_unit"] == b["aux_unit"] and a["boundaries"] == b["boundaries"]
    assert len(list((tmp_path / "units").iterdir())) == 1


def test_split_exact_on_image_data_is_a_clear_error(tmp_path):
    env = dict(os.environ, HARNESS_WORKDIR=str(tmp_path))
    out = subprocess.run([HARNESS, "split", "data=digits", "split.field=exact"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "split.field=exact needs data with a closed-form velocity" in out.stderr
