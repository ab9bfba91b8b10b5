"""Conversions between objectives are exact on Gaussian data (seed 003, Eq. 5, 7, 21, 24-27)."""
import math

import pytest
import torch

from harness.objectives import build_objective
from harness.objectives.conversions import (damping, ddpm_timestep, eps_from_velocity, seed003_velocity,
                                            snr_aligned_velocity, x1_from_velocity)
from harness.objectives.schedules import Cosine, LinearBeta, LinearPath, make_schedule
from harness.core.errors import ConfigError
from tests.gaussian import linear_posteriors, linear_velocity, vp_posteriors

MU, S = 0.7, 0.4


@pytest.fixture(autouse=True)
def float64():
    """Closed-form comparisons in float64, restored afterwards so no other test inherits it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def points(n=512, d=3, lo=0.02, hi=0.98, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 1.5, lo + (hi - lo) * torch.rand(n, generator=g)


@pytest.mark.parametrize("schedule", [Cosine(), LinearBeta(), LinearPath()])
def test_snr_aligned_epsilon_expert_gives_exact_linear_velocity(schedule):
    x, t = points()

    def eps_fn(x_tau, tau):  # the exact epsilon-predictor of this schedule
        alpha, sigma = schedule.alpha_sigma(tau)
        return vp_posteriors(x_tau, alpha, sigma, MU, S)[1]

    v = snr_aligned_velocity(eps_fn, x, t, schedule)
    assert torch.allclose(v, linear_velocity(x, t, MU, S), atol=1e-9, rtol=1e-9)


def test_seed003_conversion_on_linear_path_equals_fm_velocity():
    """With alpha = 1 - tau, sigma = tau the seed's Eq. 25 is the FM velocity (undamped for tau <= 0.85)."""
    sched = LinearPath()
    x, t = points(lo=0.16, hi=0.99)
    tau = 1 - t
    alpha, sigma = sched.alpha_sigma(tau)
    eps = vp_posteriors(x, alpha, sigma, MU, S)[1]
    v = seed003_velocity(eps, x, tau, sched, alpha_min=0.0, clamp=None)
    assert torch.allclose(v, linear_velocity(x, t, MU, S), atol=1e-9)


def test_seed003_conversion_cosine_is_vp_probability_flow_velocity():
    sched = Cosine()
    x, t = points(lo=0.2, hi=0.99)
    tau = 1 - t
    alpha, sigma = sched.alpha_sigma(tau)
    x0, eps = vp_posteriors(x, alpha, sigma, MU, S)
    da, ds = sched.derivatives(tau)
    expected = -(da[:, None] * x0 + ds[:, None] * eps)
    v = seed003_velocity(eps, x, tau, sched, alpha_min=0.0, clamp=None, damp=False)
    assert torch.allclose(v, expected, atol=1e-9)
    # and the derivative formulas are the derivatives (central differences)
    h = 1e-6
    a1, s1 = sched.alpha_sigma(tau + h)
    a0, s0 = sched.alpha_sigma(tau - h)
    assert torch.allclose(da, (a1 - a0) / (2 * h), atol=1e-6)
    assert torch.allclose(ds, (s1 - s0) / (2 * h), atol=1e-6)


def test_seed003_safeguards():
    tau = torch.tensor([0.5, 0.86, 0.9, 0.99, 1.2])
    s = damping(tau)
    literal = torch.clamp(15 / (1 + torch.exp(10 * (tau - 0.85))), max=1.0)
    assert torch.equal(s[1:], literal[1:]) and s[0] == 1.0
    # As printed in seed 003 (Sec. 8), s(t) < 1 needs e^{10(t-0.85)} > 14, i.e. t > 1.114:
    # on t in [0, 1] the damping is the identity.  Recorded, not "fixed".
    assert bool((s[:4] == 1.0).all()) and s[4] < 1.0
    # alpha_safe and the clamp keep x0_hat finite at alpha -> 0
    x = torch.full((4, 2), 3.0)
    v = seed003_velocity(torch.zeros(4, 2), x, torch.ones(4), Cosine())
    assert torch.isfinite(v).all()


def test_linear_beta_derivatives_and_inverse():
    sched = LinearBeta()
    tau = torch.linspace(0.01, 0.99, 50)
    a, s = sched.alpha_sigma(tau)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a))
    assert torch.allclose(sched.tau_from_snr_ratio(a / s), tau, atol=1e-9)
    da, ds = sched.derivatives(tau)
    h = 1e-6
    assert torch.allclose(da, (sched.alpha_sigma(tau + h)[0] - sched.alpha_sigma(tau - h)[0]) / (2 * h), atol=1e-5)
    # its discrete counterpart: beta_1 ~ 1e-4 and beta_1000 ~ 0.02 per 1/1000 step
    assert math.isclose(0.1 / 1000, 1e-4) and math.isclose(20 / 1000, 0.02)


def test_ddpm_timestep_map_eq21():
    t = torch.tensor([0.0, 0.5, 1.0, 0.0005, 0.9996])
    assert ddpm_timestep(t).tolist() == [0, 500, 999, 0, 999]


def test_velocity_x1_eps_inverses_are_exact():
    x, t = points()
    v = linear_velocity(x, t, MU, S)
    x1, eps = linear_posteriors(x, t, MU, S)
    assert torch.allclose(x1_from_velocity(v, x, t), x1, atol=1e-10)
    assert torch.allclose(eps_from_velocity(v, x, t), eps, atol=1e-10)


@pytest.mark.parametrize("cfg", [
    {"name": "flow_matching"},
    {"name": "x_prediction", "t_eps": 0.0},
    {"name": "ddpm", "schedule": "cosine", "conversion": "snr_aligned", "clamp": None},
    {"name": "ddpm", "schedule": "linear", "conversion": "snr_aligned", "clamp": None},
])
def test_objective_velocity_of_exact_predictor_is_exact(cfg):
    """Each objective's own exact predictor, read through ``velocity``, is the exact field."""
    obj = build_objective(cfg)
    x, t = points()

    def net(xi, ti, y):
        if cfg["name"] == "flow_matching":
            return linear_velocity(xi, ti, MU, S)
        if cfg["name"] == "x_prediction":
            return linear_posteriors(xi, ti, MU, S)[0]
        alpha, sigma = obj.schedule.alpha_sigma(ti)  # ddpm: the net sees tau
        return vp_posteriors(xi, alpha, sigma, MU, S)[1]

    assert torch.allclose(obj.velocity(net, x, t, None), linear_velocity(x, t, MU, S), atol=1e-8)


def test_ddpm_loss_is_zero_for_the_true_noise_and_targets_match():
    obj = build_objective({"name": "ddpm", "schedule": "cosine"})
    g = torch.Generator().manual_seed(1)
    x1, noise, t = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), torch.rand(8, generator=g)
    alpha, sigma = obj.schedule.alpha_sigma(1 - t)

    def oracle(x_tau, tau, y):  # recovers the noise exactly because it knows x1
        return (x_tau - alpha[:, None] * x1) / sigma[:, None]

    assert torch.allclose(obj.loss(oracle, x1, noise, t, None), torch.zeros(8), atol=1e-18)
    fm = build_objective({"name": "flow_matching"})
    assert torch.allclose(fm.loss(lambda x, t, y: x1 - noise, x1, noise, t, None), torch.zeros(8))


def test_unknown_schedule_and_objective_key_are_config_errors():
    with pytest.raises(ConfigError, match="objective.schedule"):
        make_schedule("sigmoid")
    with pytest.raises(ConfigError, match="objective.shedule"):
        build_objective({"name": "ddpm", "shedule": "cosine"})


# ---------------------------------------------------------------- flow matching on the cosine schedule (seed 003 Sec. 3.3)
def exact_cosine_velocity(x_tau, t):
    """The exact cosine-path velocity dx/dt of Gaussian data, E[-(alpha' x1 + sigma' eps) | x_tau], tau = 1 - t."""
    sched = Cosine()
    alpha, sigma = sched.alpha_sigma(1 - t)
    d_alpha, d_sigma = sched.derivatives(1 - t)
    x1, eps = vp_posteriors(x_tau, alpha, sigma, MU, S)
    return -(d_alpha[:, None] * x1 + d_sigma[:, None] * eps)


def test_cosine_fm_target_is_the_time_derivative_of_its_path():
    """The regression target is d x_tau / dt along each sample's path (sign and time direction included)."""
    obj = build_objective({"name": "flow_matching", "path": "cosine"})
    g = torch.Generator().manual_seed(1)
    x1, noise, t = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g), 0.05 + 0.9 * torch.rand(64, generator=g)
    x_t, target = obj._cosine_target(x1, noise, t)
    h = 1e-6
    ahead, _ = obj._cosine_target(x1, noise, t + h)
    assert torch.allclose(target, (ahead - x_t) / h, atol=1e-5)
    # a network answering the target exactly has zero loss; the linear-path target does not
    exact = lambda x, tt, y: target                                       # noqa: E731
    assert float(obj.loss(exact, x1, noise, t, None).max()) < 1e-20
    assert float(build_objective({"name": "flow_matching"}).loss(exact, x1, noise, t, None).mean()) > 1e-2


def test_cosine_fm_snr_aligned_answer_is_the_exact_linear_velocity():
    x, t = points()
    obj = build_objective({"name": "flow_matching", "path": "cosine"})
    v = obj.velocity(lambda xx, tt, y: exact_cosine_velocity(xx, tt), x, t, None)
    assert torch.allclose(v, linear_velocity(x, t, MU, S), atol=1e-9, rtol=1e-9)


def test_cosine_fm_native_answer_follows_the_cosine_marginals():
    """Integrating the native field from z ~ N(0, I) at t = 0 transports z along the cosine marginals:
    x_t = alpha mu + sqrt(alpha^2 s^2 + sigma^2) z (Gaussian data), unlike the linear path's
    x_t = t mu + sqrt(t^2 s^2 + (1 - t)^2) z; both end at mu + s z."""
    native = build_objective({"name": "flow_matching", "path": "cosine", "conversion": "native"})
    linear = build_objective({"name": "flow_matching", "path": "cosine"})
    z = torch.linspace(-2, 2, 9)[:, None]
    steps = 4000
    for obj, marginal in ((native, lambda t: (math.cos(math.pi * (1 - t) / 2), math.sin(math.pi * (1 - t) / 2))),
                          (linear, lambda t: (t, 1 - t))):
        x = z.clone()
        for i in range(steps // 2):                                       # midpoint rule to t = 0.5
            t0 = torch.full((9,), i / steps)
            v = lambda xx, tt: obj.velocity(lambda a, b, y: exact_cosine_velocity(a, b), xx, tt, None)  # noqa: E731
            x = x + (1 / steps) * v(x + 0.5 / steps * v(x, t0), t0 + 0.5 / steps)
        a, s = marginal(0.5)
        assert torch.allclose(x, a * MU + math.sqrt(a**2 * S**2 + s**2) * z, atol=1e-6)


def test_a_ddpm_units_hash_ignores_its_velocity_conversion_but_not_its_schedule():
    """conversion, clamp, alpha_min and damping only change how the trained eps-network answers as a velocity
    (its loss never reads them), so one trained DDPM expert serves every conversion."""
    from harness.train.units import UnitSpec

    def unit(**obj):
        return UnitSpec("x", {"name": "gaussian_mixture"}, {"name": "mlp"}, dict({"name": "ddpm"}, **obj),
                        {"steps": 10, "seed": 0})
    assert unit().hash == unit(conversion="seed003", clamp=5.0, alpha_min=0.05, damping="eq31").hash
    assert unit().hash != unit(schedule="linear").hash


def test_cosine_fm_conversion_is_not_hashed_but_the_path_is():
    from harness.train.units import UnitSpec

    def unit(**obj):
        return UnitSpec("x", {"name": "gaussian_mixture"}, {"name": "mlp"}, dict({"name": "flow_matching"}, **obj),
                        {"steps": 10, "seed": 0})
    assert unit(path="cosine").hash == unit(path="cosine", conversion="native").hash
    assert unit(path="cosine").hash != unit().hash
    assert unit(path="linear").hash == unit().hash            # units trained before the key existed keep their hash
    with pytest.raises(ConfigError, match="objective.path: 'sigmoid' is not one of linear, cosine"):
        build_objective({"name": "flow_matching", "path": "sigmoid"})
    with pytest.raises(ConfigError, match="objective.conversion=native needs objective.path=cosine"):
        build_objective({"name": "flow_matching", "conversion": "native"})
