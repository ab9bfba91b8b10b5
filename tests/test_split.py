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
from harness.core.errors import ConfigError
from harness.field import Exact
from harness.core.registry import get
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
    out = subprocess.run([HARNESS, "split", "--json", "data=gaussian_mixture", "eval=fd_raw", "backbone=mlp_tiny", *args],
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


def test_cumulative_panel_crosses_the_equal_burden_levels_at_the_boundaries(tmp_path):
    """Seed 000 Fig. 2's panel: the plotted cumulative curve ends at 1 and reaches i / N at the i-th boundary."""
    from harness.pipeline.split import split_figure

    a = _split(tmp_path, "split.field=exact", "split.n=3")
    fig = split_figure(a)
    line = fig.axes[1].get_lines()[0]
    t, c = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert c[0] == 0.0 and c[-1] == pytest.approx(1.0) and bool((np.diff(c) >= 0).all())
    spacing = float(np.diff(t).max())
    for i, b in enumerate(a["boundaries"], start=1):
        crossing = float(np.interp(i / 3, c, t))
        assert abs(crossing - b) <= spacing, (i, crossing, b)


def test_harness_split_with_aux_model_reuses_its_unit(tmp_path):
    a = _split(tmp_path, "split.aux_steps=60", "split.trajectories=64", "train.batch_size=128")
    b = _split(tmp_path, "split.aux_steps=60", "split.trajectories=64", "train.batch_size=128")
    assert a["aux_unit"] == b["aux_unit"] and a["boundaries"] == b["boundaries"]
    assert len([p for p in (tmp_path / "units").iterdir() if p.is_dir()]) == 1


def test_split_exact_on_image_data_is_a_clear_error(tmp_path):
    env = dict(os.environ, HARNESS_WORKDIR=str(tmp_path))
    out = subprocess.run([HARNESS, "split", "data=digits", "split.field=exact"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "split.field=exact needs data with a closed-form velocity" in out.stderr


def test_loss_monitor_is_the_conditional_variance_of_the_target_for_the_exact_field():
    """x1 ~ N(mu, s^2 I), x0 ~ N(0, I): Var[x1 - x0 | x_t] per dim = (s^2 + 1) - (t s^2 - (1 - t))^2 / (t^2 s^2 + (1 - t)^2),
    the irreducible flow-matching loss; the monitor's Monte-Carlo estimate must match it at every grid midpoint."""
    from harness.data.base import ArrayDataset

    mu, s, d, k = 0.5, 0.3, 4, 4096
    gm = GaussianMixture([[mu] * d], [s], [1.0])
    rows = mu + s * torch.randn(20000, d, generator=torch.Generator().manual_seed(1))
    data = ArrayDataset(rows, torch.zeros(20000), num_classes=0, name="gauss", kind="vector")
    field = Exact(lambda x, t, y: gm.exact_velocity(x.double(), t.double()).to(x.dtype))
    res = get("monitor", "loss")(field, shape=(d,), trajectories=k, grid=10, seed=0, dataset=data)
    t = (np.arange(10) + 0.5) / 10
    expected = d * ((s**2 + 1) - (t * s**2 - (1 - t)) ** 2 / (t**2 * s**2 + (1 - t) ** 2))
    assert np.allclose(res.curve, expected, rtol=0.08), (res.curve, expected)
    assert res.grid[-1] == pytest.approx(1.0) and res.nfe == 10


def test_a_zero_monitor_curve_is_an_error_not_a_naive_split():
    from harness.pipeline.split import _check_curve

    with pytest.raises(ConfigError, match="zero everywhere"):
        _check_curve([0.0] * 10, "acceleration")
    with pytest.raises(ConfigError, match="not finite at grid cells \\[3\\]"):
        _check_curve([1.0, 1.0, 1.0, float("nan")], "loss")


@pytest.mark.slow
def test_learned_aux_model_boundaries_land_near_the_exact_ones(tmp_path, monkeypatch):
    """Unconditional 2-component mixture: the aux MLP (10 % of the data, 1500 steps) vs the exact field.

    Tolerance 0.05 (5 grid cells): the learned field's finite-difference acceleration is jittery
    from cell to cell (seed 000 only needs an approximate aux model), and FINDINGS saw boundaries
    move by ~0.04 between a 100- and a 200-point grid on real data. The exact boundaries here are
    (0.28, 0.55), far from the naive (0.33, 0.67), so the tolerance still separates CBS from naive.
    """
    from harness.config import load
    from harness.pipeline.split import compute_split

    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path))
    base = ["experiment=gmm_mini", "data.conditional=false", "split.n=3", "run.progress=false", "split.trajectories=512"]
    exact = compute_split(load([*base, "split.field=exact"]))["boundaries"]
    learned = compute_split(load([*base, "split.aux_steps=1500"]))["boundaries"]
    assert np.allclose(learned, exact, atol=0.05), (learned, exact)
    assert not np.allclose(exact, [1 / 3, 2 / 3], atol=0.05)
    # conditional data: the exact field is each component's own Gaussian field, as a conditional aux model learns
    conditional = compute_split(load([*base[:1], *base[2:], "split.field=exact"]))["boundaries"]
    assert conditional[0] > exact[0] + 0.1


def test_harness_split_and_method_cbs_share_one_split_result(tmp_path):
    """One key (aux unit hash rules): CBS reads the split `harness split` wrote, and the other way round."""
    from harness.core.registry import get
    from harness.pipeline.split import split_dir
    from tests.configs import load_in

    common = ("split.field=exact", "split.n=3", "split.trajectories=64")
    result = _split(tmp_path, *common)
    mine = ("data=gaussian_mixture", "eval=fd_raw", "backbone=mlp_tiny", *common)
    cfg = load_in(tmp_path, *mine, "method=cbs", "method.n=3", "train.log_every=7", "train.checkpoint_every=13")
    cbs = get("method", "cbs")(cfg, n=3)
    assert split_dir(cbs.split_config()) == Path(result["png"]).parent  # same folder, logging keys aside
    written = (Path(result["png"]).parent / "split.json").stat().st_mtime_ns
    cbs.prepare()
    assert cbs.boundaries == result["boundaries"]
    assert (Path(result["png"]).parent / "split.json").stat().st_mtime_ns == written  # read, not recomputed
    other = load_in(tmp_path, *mine, "method=cbs", "method.n=3", "split.grid=50")
    assert split_dir(get("method", "cbs")(other, n=3).split_config()) != split_dir(cbs.split_config())
