"""Interval-restricted training samples t only inside its interval (seed 000, Alg. 1)."""
import pytest
import torch

from harness.core.errors import ConfigError
from harness.core.registry import get


@pytest.mark.parametrize("name,kwargs", [("uniform", {}), ("logit_normal", {"mean": 0.3, "std": 1.2}), ("jit", {})])
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.0, 0.414), (0.414, 0.788), (0.788, 1.0), (0.999, 1.0)])
def test_samples_stay_inside_interval(name, kwargs, interval):
    sampler = get("time_sampler", name)(**kwargs)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u[:2] = torch.tensor([0.0, 1.0 - 1e-16], dtype=torch.float64)  # the extremes of torch.rand
    t = sampler(u, interval)
    a, b = interval
    assert bool((t >= a).all()) and bool((t < b).all())
    assert float(t.max() - t.min()) > 0.9 * (b - a) * (0.5 if name != "uniform" else 1.0)


def test_truncated_logit_normal_matches_its_density():
    """Inverse-CDF truncation gives the renormalised density on [a, b)."""
    sampler = get("time_sampler", "logit_normal")(mean=0.0, std=1.0)
    a, b = 0.2, 0.6
    t = sampler(torch.rand(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64), (a, b))
    grid = torch.linspace(a, b, 20001, dtype=torch.float64)
    logit = torch.log(grid) - torch.log1p(-grid)
    dens = torch.exp(-0.5 * logit**2) / (grid * (1 - grid))
    mean = float((grid * dens).sum() / dens.sum())
    assert abs(float(t.mean()) - mean) < 2e-3


def test_same_draws_map_monotonically_across_intervals():
    """Paired draws: the same u gives the same quantile in any interval (naive vs CBS differ only by boundaries)."""
    sampler = get("time_sampler", "uniform")()
    u = torch.rand(1000, dtype=torch.float64)
    t1, t2 = sampler(u, (0.0, 0.5)), sampler(u, (0.0, 0.414))
    assert torch.equal(torch.argsort(t1), torch.argsort(t2))


def test_empty_interval_is_config_error():
    with pytest.raises(ConfigError, match="interval"):
        get("time_sampler", "uniform")()(torch.rand(3), (0.5, 0.5))
