"""EDM2's power-function EMA: closed-form weights, the update that realises them, post-hoc reconstruction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.train.ema import (PowerEMA, averaging_weights, beta, combine, exp_to_std, posthoc_coefficients,
                               std_to_exp)


@pytest.mark.parametrize("std", [0.05, 0.10, 0.2])
def test_std_and_exponent_are_inverse(std):
    assert exp_to_std(std_to_exp(std)) == pytest.approx(std, rel=1e-10)


@pytest.mark.parametrize("std", [0.05, 0.10])
@pytest.mark.parametrize("steps", [10, 400, 5000])
def test_averaging_weights_sum_to_one_and_forget_the_start(std, steps):
    w = averaging_weights(std, steps)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    # the first quarter of training (the initialisation's neighbourhood) weighs (1/4)^(gamma+1): tiny at any length
    k = steps // 4
    quarter = w[:k].sum()
    assert quarter == pytest.approx((k / steps) ** (std_to_exp(std) + 1), rel=1e-6) and quarter < 1e-4
    # a fixed decay of 0.999 over 400 steps keeps 0.999^400 = 67 % of the initialisation: what this replaces
    assert 0.999 ** 400 > 0.6


@pytest.mark.parametrize("std", [0.05, 0.10])
def test_the_update_realises_the_closed_form_weights(std):
    """ema_T of the iterates theta_i = e_i (one-hot) is exactly the weight vector w."""
    steps = 60
    ema = torch.zeros(steps, dtype=torch.float64)
    for t in range(1, steps + 1):
        theta = torch.zeros(steps, dtype=torch.float64)
        theta[t - 1] = 1.0
        ema = beta(std, t) * ema + (1 - beta(std, t)) * theta
    assert np.allclose(ema.numpy(), averaging_weights(std, steps), atol=1e-12)


def test_power_ema_tracks_every_profile_of_a_model():
    model = torch.nn.Linear(3, 2)
    ema = PowerEMA(model, [0.05, 0.10])
    history = []
    for t in range(1, 41):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in model.parameters()])
        ema.update(t)
    for k, std in enumerate(ema.stds):
        w = averaging_weights(std, 40)
        for j, p in enumerate(ema.profiles[k]):
            expected = sum(float(wi) * h[j].double() for wi, h in zip(w, history))
            assert torch.allclose(p.double(), expected, atol=1e-5)


def test_posthoc_reconstructs_a_profile_between_the_tracked_ones():
    """Snapshots of sigma 0.05 and 0.10 every 1/8 of training give sigma 0.07 at the end to a small error."""
    T = 800
    target = averaging_weights(0.07, T)
    steps = [T * k // 8 for k in range(1, 9)]
    snaps, stds = [], []
    for s in steps:
        for std in (0.05, 0.10):
            snaps.append(np.pad(averaging_weights(std, s), (0, T - s)))
            stds.append(std)
    c = posthoc_coefficients([s for s in steps for _ in (0, 1)], stds, T, 0.07)
    recon = np.sum([ci * w for ci, w in zip(c, snaps)], axis=0)
    err = np.abs(recon - target).sum()
    spread = np.abs(averaging_weights(0.05, T) - averaging_weights(0.10, T)).sum()
    assert c.sum() == pytest.approx(1.0) and err < 0.1 * spread
    # a tracked profile at a snapshot step is recovered (to the continuous-time fit's tolerance)
    same = posthoc_coefficients([s for s in steps for _ in (0, 1)], stds, T, 0.10)
    assert np.abs(np.sum([ci * w for ci, w in zip(same, snaps)], axis=0) - averaging_weights(0.10, T)).sum() < 0.02


def test_combine_is_a_weighted_sum_of_float_tensors_and_keeps_the_rest():
    a = {"w": torch.ones(2), "n": torch.tensor(3)}
    b = {"w": 3 * torch.ones(2), "n": torch.tensor(3)}
    out = combine([a, b], [0.25, 0.75])
    assert torch.allclose(out["w"], torch.full((2,), 2.5)) and out["n"].item() == 3
