"""The published samplers (issue 18 item 2): DiT's DDPM ancestral sampler, SiT's SDE sampler, DiT's CFG quirk.

Oracles: Gaussian data x1 ~ N(mu, s^2), whose eps and velocity are known in closed form (tests/gaussian.py);
the respacing and the 1000-step table recomputed here from their definitions (Ho et al. 2020; ADM
``space_timesteps``), not from the modules under test.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.core.errors import ConfigError
from harness.field.base import Exact, Field, Net
from harness.field.guided import Branch, Guided
from harness.objectives.base import Parameterisation, Prediction
from harness.objectives.ddpm import DDPMEpsilon
from harness.objectives.schedules import DiscreteLinearBeta
from harness.sample import DDPMAncestral, EulerMaruyama, generate
from harness.sample.respace import Respaced, space_timesteps
from tests.gaussian import linear_velocity, vp_posteriors

MU, S = 0.7, 0.5
N = 20000


class ExactEps(torch.nn.Module):
    """The exact eps of Gaussian data on ``schedule``'s path, called as a network (x, tau, y) -> eps.

    ``variance``: a constant for the learned-range channels (2C outputs, as DiT's ``learn_sigma``), or None.
    """

    def __init__(self, schedule, variance: float | None = None) -> None:
        super().__init__()
        self.schedule, self.variance = schedule, variance

    def forward(self, x, tau, y=None):
        alpha, sigma = self.schedule.alpha_sigma(tau.double())
        _, eps = vp_posteriors(x.double().flatten(1), alpha, sigma, MU, S)
        eps = eps.reshape(x.shape).to(x.dtype)
        if self.variance is None:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.variance)], dim=1)


def eps_field(schedule: str = "linear_1000", variance: float | None = None) -> Net:
    objective = DDPMEpsilon(schedule=schedule)
    return Net(ExactEps(objective.schedule, variance), objective)


def gaussian_moments_ok(x: torch.Tensor, tol_mean: float = 0.02, tol_var: float = 0.05) -> None:
    m, v = float(x.mean()), float(x.var())
    assert abs(m - MU) < tol_mean, (m, MU)
    assert abs(v / S**2 - 1) < tol_var, (v, S**2)


# ---------------------------------------------------------------- the respaced 1000-step process

def test_space_timesteps_is_adm_rounding_of_the_fractional_stride():
    """250 of 1000: round(i * 999 / 249) (no .5 ties arise for these numbers), the ends kept; sections as ADM."""
    assert space_timesteps(1000, [250]) == [round(i * 999 / 249) for i in range(250)]
    assert space_timesteps(1000, [1000]) == list(range(1000))
    assert space_timesteps(300, [10, 15, 20])[:10] == [round(i * 99 / 9) for i in range(10)]
    sections = space_timesteps(300, [10, 15, 20])
    assert sections[10] == 100 and sections[24] == 199 and len(sections) == 45   # (99/14 * 7 = 49.5 is a float tie)
    assert sections[25:] == [200 + round(i * 99 / 19) for i in range(20)]
    assert len(space_timesteps(1000, [250])) == 250


def test_linear_1000_table_and_respaced_coefficients_match_the_formulas():
    """abar_k = prod (1 - beta_j), beta = linspace(1e-4, 0.02, 1000); respaced betas keep abar at the kept steps;
    posterior coefficients of Ho et al. Eq. 7 recomputed with numpy-free float64 loops."""
    sched = DiscreteLinearBeta()
    abar, taus = sched.discrete(1000)
    table = linear_1000_table()
    assert torch.allclose(abar, torch.tensor(table, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(taus, torch.arange(1000, dtype=torch.float64) / 1000)
    alpha, _ = sched.alpha_sigma(torch.tensor([0.0, 0.5, 0.999], dtype=torch.float64))
    assert torch.allclose(alpha**2, torch.tensor([table[0], table[500], table[999]], dtype=torch.float64), rtol=1e-12)

    kept = space_timesteps(1000, [250])
    p = Respaced.build(abar, taus, kept)
    assert p.steps == 250 and p.timesteps.tolist() == kept
    assert torch.allclose(torch.cumprod(1 - p.betas, 0), torch.tensor([table[k] for k in kept], dtype=torch.float64))
    for j in (1, 7, 249):
        a, a_prev, beta = table[kept[j]], table[kept[j - 1]], 1 - table[kept[j]] / table[kept[j - 1]]
        assert math.isclose(float(p.posterior_variance[j]), beta * (1 - a_prev) / (1 - a), rel_tol=1e-10)
        assert math.isclose(float(p.coef_x0[j]), beta * math.sqrt(a_prev) / (1 - a), rel_tol=1e-10)
        assert math.isclose(float(p.coef_xt[j]), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a), rel_tol=1e-10)
    assert float(p.coef_x0[0]) == pytest.approx(1.0) and float(p.coef_xt[0]) == pytest.approx(0.0, abs=1e-12)


def test_linear_1000_snr_inverse_and_derivatives_are_consistent():
    sched = DiscreteLinearBeta()
    tau = torch.linspace(0.001, 0.998, 97, dtype=torch.float64)
    alpha, sigma = sched.alpha_sigma(tau)
    assert torch.allclose(sched.tau_from_snr_ratio(alpha / sigma), tau, atol=1e-9)
    h = 1e-7
    tau_mid = torch.tensor([0.2505, 0.7005], dtype=torch.float64)   # inside table segments: one-sided slopes agree
    (a1, s1), (a0, s0) = sched.alpha_sigma(tau_mid + h), sched.alpha_sigma(tau_mid - h)
    da, ds = sched.derivatives(tau_mid)
    assert torch.allclose(da, (a1 - a0) / (2 * h), rtol=1e-5) and torch.allclose(ds, (s1 - s0) / (2 * h), rtol=1e-5)


# ---------------------------------------------------------------- DDPM ancestral sampling

def linear_1000_table() -> list[float]:
    """abar_k of the 1000-step linear-beta process, by its definition (Ho et al. 2020)."""
    prod, table = 1.0, []
    for k in range(1000):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * k / 999)
        table.append(prod)
    return table


def ddpm_chain_moments(variance: str, steps: int) -> tuple[float, float]:
    """Exact mean and variance of the respaced ancestral chain on Gaussian data with the exact eps.

    Every step is affine in x plus Gaussian noise (eps_hat = g (x - a mu) / (a^2 s^2 + g^2)), so the moments
    follow in closed form from Ho et al.'s posterior (Eq. 6-7) over the kept steps' abar.
    """
    table, kept = linear_1000_table(), space_timesteps(1000, [steps])
    abar = [table[k] for k in kept]
    m, v = 0.0, 1.0
    for j in reversed(range(len(kept))):
        a_j, a_prev = abar[j], (abar[j - 1] if j else 1.0)
        beta = 1 - a_j / a_prev
        a, g = math.sqrt(a_j), math.sqrt(1 - a_j)
        c = g / (a_j * S**2 + g**2)                                    # eps_hat = c (x - a mu)
        A, B = (1 - g * c) / a, g * c * MU                             # x0_hat = (x - g eps_hat) / a = A x + B
        c1, c2 = beta * math.sqrt(a_prev) / (1 - a_j), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_j)
        m, v = (c1 * A + c2) * m + c1 * B, (c1 * A + c2) ** 2 * v
        if j:   # no noise at the last step; beta~_j (fixed_small) or beta_j (fixed_large) before it
            v += beta * (1 - a_prev) / (1 - a_j) if variance == "fixed_small" else beta
    return m, v


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ddpm_with_the_exact_eps_has_the_chains_moments_and_the_datas(variance):
    """The sampler's samples have the exact moments of the chain it should run (tight: 4 sigma at n = 1e5),
    and those are the data's up to the fixed variances' known bias: beta~ and beta bracket the reverse
    variance (Nichol & Dhariwal 2021, Sec. 3.1), a few % at 250 steps, so the data check is looser."""
    torch.manual_seed(0)
    n = 100_000
    x, nfe = DDPMAncestral(steps=250, variance=variance)(eps_field(), torch.randn(n, 1, dtype=torch.float64))
    assert nfe == 250
    m, v = ddpm_chain_moments(variance, 250)
    assert abs(float(x.mean()) - m) < 4 * math.sqrt(v / n)
    assert abs(float(x.var()) / v - 1) < 4 * math.sqrt(2 / n)
    gaussian_moments_ok(x, tol_var=0.08)


@pytest.mark.parametrize("schedule, variance", [("cosine", "fixed_small"), ("linear", "fixed_large")])
def test_ddpm_samples_the_harness_ddpm_units_natively(schedule, variance):
    """The harness's own DDPM objective (continuous schedules, discretised by Schedule.discrete) sampled natively."""
    torch.manual_seed(1)
    x, nfe = DDPMAncestral(steps=250, variance=variance)(eps_field(schedule), torch.randn(N, 1))
    assert nfe == 250
    gaussian_moments_ok(x, tol_var=0.08)


def test_learned_range_reproduces_the_fixed_variances_exactly():
    """v = -1 is log beta~ (fixed_small), v = +1 log beta (fixed_large, beyond the first step): same draws, same samples."""
    x0 = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, field, variance in (("small", eps_field(variance=-1.0), "auto"), ("small_ref", eps_field(), "fixed_small"),
                                  ("large", eps_field(variance=1.0), "learned_range"), ("large_ref", eps_field(), "fixed_large")):
        torch.manual_seed(2)
        out[name] = DDPMAncestral(steps=50, variance=variance)(field, x0.clone())[0]
    assert torch.equal(out["small"], out["small_ref"]) and torch.equal(out["large"], out["large_ref"])
    assert not torch.equal(out["small"], out["large"])


def test_ddpm_midrange_learned_variance_still_samples_the_data():
    torch.manual_seed(3)
    gaussian_moments_ok(DDPMAncestral(steps=250)(eps_field(variance=0.0), torch.randn(N, 1))[0], tol_var=0.08)


def test_ddpm_refuses_a_velocity_field_and_bad_steps():
    velocity = Exact(lambda x, t, y: linear_velocity(x, t, MU, S))
    with pytest.raises(ConfigError, match="sampler=ddpm needs a field answering eps"):
        DDPMAncestral(steps=10)(velocity, torch.randn(4, 1))
    with pytest.raises(ConfigError, match=r"sampler.steps must be in \[1, sampler.diffusion_steps=1000\]"):
        DDPMAncestral(steps=1001)
    with pytest.raises(ConfigError, match="sampler.diffusion_steps=500: schedule linear_1000"):
        DDPMAncestral(steps=250, diffusion_steps=500)(eps_field(), torch.randn(4, 1))
    with pytest.raises(ConfigError, match="learned_range: the network has no variance channels"):
        DDPMAncestral(steps=5, variance="learned_range")(eps_field(), torch.randn(4, 1))


def test_validate_refuses_ddpm_on_a_velocity_objective():
    from harness.config import load

    with pytest.raises(ConfigError, match="sampler=ddpm needs an eps-prediction network, but objective=flow_matching"):
        load(["sampler=ddpm"])
    assert load(["sampler=ddpm", "objective=ddpm_linear_1000"])["sampler"]["steps"] == 250


# ---------------------------------------------------------------- SiT's SDE sampler

def sde_chain_moments(sampler: EulerMaruyama) -> tuple[float, float]:
    """Exact moments of SiT's Euler-Maruyama chain on Gaussian data with the exact velocity.

    With var_t = t^2 s^2 + (1 - t)^2 and r = x - t mu: v = mu + (t s^2 - (1 - t)) r / var_t and the score is
    -r / var_t, so the drift v + w s = mu + k r with k = (t s^2 - (1 - t) - w) / var_t is affine in x.
    """
    ts = torch.linspace(0.0, 0.96, 250, dtype=torch.float64).tolist()   # SiT: linspace(t0, 1 - last_step_size, 250)
    dt = ts[1] - ts[0]
    m, v = 0.0, 1.0
    for t in ts[:-1]:
        w = 1 - t                                                        # diffusion_form "sigma"
        k = (t * S**2 - (1 - t) - w) / (t**2 * S**2 + (1 - t) ** 2)
        m, v = m + dt * (MU + k * (m - t * MU)), (1 + k * dt) ** 2 * v + 2 * w * dt
    t, w = ts[-1], 1 - ts[-1]
    k = (t * S**2 - (1 - t) - w) / (t**2 * S**2 + (1 - t) ** 2)
    return m + 0.04 * (MU + k * (m - t * MU)), (1 + k * 0.04) ** 2 * v  # the noiseless "Mean" step of 0.04


def test_sde_with_the_exact_velocity_has_the_chains_moments_and_the_datas():
    torch.manual_seed(4)
    n = 100_000
    field = Exact(lambda x, t, y: linear_velocity(x, t, MU, S))
    sampler = EulerMaruyama()
    x, nfe = sampler(field, torch.randn(n, 1, dtype=torch.float64))
    assert nfe == 250 and len(sampler.call_times()) == 250
    m, v = sde_chain_moments(sampler)
    assert abs(float(x.mean()) - m) < 4 * math.sqrt(v / n)
    assert abs(float(x.var()) / v - 1) < 4 * math.sqrt(2 / n)
    gaussian_moments_ok(x)


@pytest.mark.parametrize("form, last", [("SBDM", "Tweedie"), ("constant", "Euler")])
def test_sde_other_diffusions_and_last_steps_sample_the_data(form, last):
    torch.manual_seed(5)
    field = Exact(lambda x, t, y: linear_velocity(x, t, MU, S))
    gaussian_moments_ok(EulerMaruyama(steps=250, diffusion_form=form, last_step=last)(field, torch.randn(N, 1))[0],
                        tol_var=0.08)


def test_score_from_velocity_is_the_gaussian_score():
    """(t v - x) / (1 - t) equals d/dx log N(x; t mu, t^2 s^2 + (1 - t)^2) for Gaussian data."""
    from harness.sample.sde import score_from_velocity

    x = torch.linspace(-2, 2, 11)[:, None]
    for t in (0.1, 0.5, 0.9):
        var = t**2 * S**2 + (1 - t) ** 2
        v = linear_velocity(x, torch.full((11,), t), MU, S)
        assert torch.allclose(score_from_velocity(v, x, t), -(x - t * MU) / var, atol=1e-6)


# ---------------------------------------------------------------- per-seed noise: any batching, any world size

@pytest.mark.parametrize("sampler", [DDPMAncestral(steps=20, variance="fixed_large"), EulerMaruyama(steps=20)])
def test_stochastic_samples_do_not_depend_on_the_shard(sampler):
    field = eps_field() if isinstance(sampler, DDPMAncestral) else Exact(lambda x, t, y: linear_velocity(x.flatten(1), t, MU, S).reshape(x.shape))
    shape = (2, 3)

    def run(seeds, batch):
        return torch.cat([x for x, _, _ in generate(field, sampler, seeds=seeds, shape=shape, num_classes=0,
                                                    batch_size=batch)])

    whole = run(range(8), 8)
    even, odd = run([0, 2, 4, 6], 3), run([1, 3, 5, 7], 4)
    interleaved = torch.stack([even, odd], 1).reshape(whole.shape)
    assert torch.equal(whole, interleaved)
    assert not torch.equal(whole[0], whole[1])


# ---------------------------------------------------------------- DiT's CFG quirk

class Constant(Field):
    """Answers a label-dependent constant per channel, natively as eps with variance channels."""

    parameterisation = Parameterisation("eps", DiscreteLinearBeta())

    def value(self, x, y):
        base = torch.arange(x.shape[1], dtype=x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
        return torch.ones_like(x) * (base + (0.0 if y is None else 10.0))

    def velocity(self, x, t, y=None):
        return self.value(x, y)

    def predict(self, x, t, y=None):
        return Prediction("eps", self.value(x, y), self.value(x, y) / 100)


@pytest.mark.parametrize("native", [False, True])
def test_guide_channels_guides_only_the_first_channels(native):
    field = Constant()
    x, y, w = torch.zeros(2, 4, 2, 2), torch.tensor([1, 2]), 1.5
    full = Guided(Branch(field, "cond"), Branch(field, "null", stream=1), w, num_classes=3)
    three = Guided(Branch(field, "cond"), Branch(field, "null", stream=1), w, num_classes=3, channels=3)
    out = (lambda g: g.predict(x, 0.5, y).value) if native else (lambda g: g(x, 0.5, y))
    cond, null = field.value(x, y), field.value(x, None)
    assert torch.equal(out(full), null + w * (cond - null))
    assert torch.equal(out(three)[:, :3], (null + w * (cond - null))[:, :3])
    assert torch.equal(out(three)[:, 3:], cond[:, 3:])
    if native:   # the variance channels are the conditional branch's, as forward_with_cfg's ``rest``
        assert torch.equal(three.predict(x, 0.5, y).variance, cond / 100)


def test_cfg_plugin_passes_guide_channels_and_validates_it():
    from harness.api.guidance import build_guidance
    from harness.config import load

    g = build_guidance({"guidance": {"name": "cfg", "scale": 1.5, "guide_channels": 3}}).wrap(Constant(), {}, 3)
    assert g.channels == 3
    with pytest.raises(ConfigError, match=r"guidance.guide_channels must be in \[1, 1\]"):
        load(["guidance=cfg", "guidance.guide_channels=3"])   # Fashion-MNIST: one channel


def test_ddpm_cost_counts_250_calls_without_a_network():
    from harness.pipeline.cost import sampler_times

    times = sampler_times(DDPMAncestral(), (4, 8, 8), eps_field())
    assert len(times) == 250 and times[0] == pytest.approx(1 - 0.999) and times[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------- an imported DiT, natively and guided as released

def test_imported_dit_is_sampled_natively_with_dits_cfg(tmp_path):
    """Our guided eps field over imported DiT weights is DiT's ``forward_with_cfg`` at the step index the DDPM
    sampler asks for (t = 1 - k / 1000 -> index k), written out here on diffusers' DiT: eps guided on 3 of 4
    channels, the 4th eps channel and the variance channels the conditional half's; then the sampler runs on it."""
    pytest.importorskip("diffusers")
    from harness.backbones.dit_import import import_official
    from tests.test_dit_import import C, K, SIZE, ours, official_state, reference, save

    ref = reference()
    model = ours(learn_sigma=True)
    import_official(model, save(official_state(ref), tmp_path))
    field = Net(model, DDPMEpsilon(schedule="linear_1000"))
    w = 1.5
    guided = Guided(Branch(field, "cond"), Branch(field, "null", stream=1), w, num_classes=K, channels=3)
    x = torch.randn(2, C, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    y, k = torch.tensor([1, 6]), 875
    with torch.no_grad():   # DiT models.py forward_with_cfg on [x; x] with labels [y; null]
        out = ref(torch.cat([x, x]), timestep=torch.full((4,), k), class_labels=torch.cat([y, torch.full((2,), K)]),
                  return_dict=False)[0]
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = eps.chunk(2)
    want = torch.cat([uncond_eps + w * (cond_eps - uncond_eps), rest[:2]], dim=1)   # the conditional half
    pred = guided.predict(x, 1 - k / 1000, y)
    torch.testing.assert_close(torch.cat([pred.value, pred.variance], 1), want, rtol=1e-4, atol=1e-4)

    assert guided.parameterisation.kind == "eps"
    samples, nfe = DDPMAncestral(steps=4)(guided, torch.randn(2, C, SIZE, SIZE), y)
    assert nfe == 4 and samples.shape == (2, C, SIZE, SIZE) and bool(torch.isfinite(samples).all())


@pytest.mark.parametrize("preset, row", [("dit_xl2_imagenet256_released", "DiT-XL/2 [51]"),
                                         ("sit_xl2_imagenet256_released", "SiT-XL/2 [44]")])
def test_the_released_presets_fill_their_published_rows_and_another_cfg_scale_does_not(tmp_path, monkeypatch, preset, row):
    """Seed 004 Tab. 3's released-checkpoint rows (2.27 / 2.06): the preset's flattened config holds every match
    and paper-scale key; the same run at CFG 4.0, 50 steps or 4 guided channels is not set beside the number."""
    import yaml

    from harness.config import load
    from harness.tables.compare import param_text
    from harness.track.store import flatten
    from tests.dit_shapes import shape_only_official

    monkeypatch.setenv("HARNESS_WORKDIR", str(tmp_path))
    (tmp_path / "ref").mkdir()
    monkeypatch.setenv("HARNESS_IMAGENET256_REFERENCE", str(tmp_path / "ref" / "VIRTUAL_imagenet256_labeled.npz"))
    ckpt = shape_only_official(tmp_path / "official.pt")
    (tmp_path / "ref" / "VIRTUAL_imagenet256_labeled.npz").write_bytes(b"")   # only its existence is checked at load
    doc = yaml.safe_load((Path(__file__).parents[1] / "results/paper/seed004_sparse_guidance.yaml").read_text())
    (t3,) = [t for t in doc["tables"] if t["id"] == "sg_t3"]
    entries = [e for e in t3["entries"] if e["row"] == row and e.get("match")]   # #Epoch: a configuration cell
    assert {e["metric"] for e in entries} >= {"fid", "sfid", "is", "precision", "recall"}

    def missing(*extra: str) -> dict:
        params = flatten(load([f"experiment={preset}", f"backbone.init_from={ckpt}", f"data.root={tmp_path}", *extra]))
        return {k: (v, params.get(k)) for e in entries for k, v in {**e["match"], **e["paper_scale"]}.items()
                if param_text(params.get(k)) != param_text(v)}

    assert missing() == {}
    for extra, key in (("guidance.scale=4.0", "guidance.scale"), ("sampler.steps=50", "sampler.steps"),
                       ("guidance.guide_channels=4", "guidance.guide_channels")):
        assert set(missing(extra)) == {key}, extra
