"""Samplers integrate any Field; sample i depends only on seed i (STYLE practice 7)."""
import torch

from harness.field import Exact
from harness.core.registry import get
from harness.sample import generate, seeded_noise_and_labels
from tests.gaussian import linear_velocity

MU, S = 1.5, 0.3
FIELD = Exact(lambda x, t, y: linear_velocity(x, t, MU, S))


def run(name, batch_size, **kw):
    sampler = get("sampler", name)(**kw)
    out = [(x, y, nfe) for x, y, nfe in generate(FIELD, sampler, seeds=range(10, 21), shape=(2,), num_classes=5,
                                                   batch_size=batch_size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]), out[0][2]


def test_sample_set_is_independent_of_batch_size():
    a, ya, _ = run("euler", 3, steps=8)
    b, yb, _ = run("euler", 11, steps=8)
    assert torch.equal(ya, yb)
    assert torch.allclose(a, b, atol=1e-6)


def test_noise_of_seed_i_is_fixed():
    x1, _ = seeded_noise_and_labels([7], (3,), 0)
    x2, _ = seeded_noise_and_labels([5, 6, 7], (3,), 0)
    assert torch.equal(x1[0], x2[2])


def test_samplers_reach_the_exact_affine_flow_map():
    """For Gaussian data the exact flow maps noise z to mu + s z; dopri5 gets there, Euler/Heun converge."""
    z, _ = seeded_noise_and_labels(range(10, 21), (2,), 0)
    target = MU + S * z.double()
    torch.set_default_dtype(torch.float64)
    try:
        errs = {}
        for name, kw in [("euler", {"steps": 200}), ("heun", {"steps": 50}), ("dopri5", {"atol": 1e-8, "rtol": 1e-8})]:
            sampler = get("sampler", name)(**kw)
            x, nfe = sampler(FIELD, z.double(), None)
            errs[name] = float((x - target).abs().max())
            if name == "euler":
                assert nfe == 200
            if name == "heun":
                assert nfe == 100
        assert errs["dopri5"] < 1e-5
        assert errs["heun"] < 1e-3
        assert errs["euler"] < 2e-2
        assert errs["heun"] < errs["euler"]
    finally:
        torch.set_default_dtype(torch.float32)
