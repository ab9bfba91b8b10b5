"""Piecewise picks the right expert at and around its boundaries (seed 000, Sec. 3)."""
import pytest
import torch

from harness.core.errors import ConfigError
from harness.field import Exact, Piecewise
from harness.core.intervals import intervals_from_boundaries


def constant(i):
    return Exact(lambda x, t, y: torch.full_like(x, float(i)))


def test_expert_index_at_and_around_boundaries():
    pw = Piecewise([constant(i) for i in range(3)], [0.414, 0.788])
    eps = 1e-9
    t = torch.tensor([0.0, 0.414 - eps, 0.414, 0.414 + eps, 0.788 - eps, 0.788, 0.99, 1.0], dtype=torch.float64)
    assert pw.expert_index(t).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    v = pw(torch.zeros(len(t), 2, dtype=torch.float64), t)
    assert v[:, 0].tolist() == [0, 0, 1, 1, 1, 2, 2, 2]


def test_float32_times_route_like_float64():
    pw = Piecewise([constant(i) for i in range(2)], [0.5])
    t = torch.tensor([0.49999997, 0.5, 0.50000006], dtype=torch.float32)
    assert pw.expert_index(t).tolist() == [0, 1, 1]


def test_each_expert_sees_only_its_elements():
    calls = []

    def recorder(i):
        def fn(x, t, y):
            calls.append((i, t.clone(), None if y is None else y.clone()))
            return torch.full_like(x, float(i))
        return Exact(fn)

    pw = Piecewise([recorder(0), recorder(1)], [0.5])
    t = torch.tensor([0.1, 0.9, 0.2, 0.6])
    y = torch.tensor([1, 2, 3, 4])
    pw(torch.zeros(4, 1), t, y)
    assert [c[0] for c in calls] == [0, 1]
    assert calls[0][1].tolist() == pytest.approx([0.1, 0.2]) and calls[0][2].tolist() == [1, 3]
    assert calls[1][2].tolist() == [2, 4]


def test_intervals_cover_unit_interval():
    assert intervals_from_boundaries([0.25, 0.5]) == [(0.0, 0.25), (0.25, 0.5), (0.5, 1.0)]


@pytest.mark.parametrize("bounds,n,msg", [([0.5, 0.4], 3, "increasing"), ([0.0], 2, r"\(0, 1\)"),
                                          ([0.3], 3, "2 interior"), ([1.2], 2, r"\(0, 1\)")])
def test_bad_boundaries(bounds, n, msg):
    with pytest.raises(ConfigError, match=msg):
        Piecewise([constant(i) for i in range(n)], bounds)


def test_piecewise_float_time_picks_the_same_expert_as_tensor_time_and_runs_on_meta():
    import torch

    from harness.field import Exact, Piecewise

    pw = Piecewise([Exact(lambda x, t, y, k=k: torch.full_like(x, float(k))) for k in range(3)], [0.25, 0.6])
    x = torch.zeros(2, 3)
    for t in (0.0, 0.2499, 0.25, 0.5, 0.6, 0.99, 1.0):
        assert torch.equal(pw(x, t), pw(x, torch.full((2,), t)))
    meta = Piecewise([Exact(lambda x, t, y: x * 2)] * 2, [0.5])
    assert meta(torch.empty(4, 3, device="meta"), 0.7).device.type == "meta"


def test_piecewise_with_value_less_meta_time_counts_equal_experts_and_refuses_unequal_ones():
    """A wrapper (e.g. CFG) turns a float t into a meta tensor: FLOPs of equal-size experts still count."""
    from harness.field import Net
    from harness.objectives import build_objective

    fm = build_objective({"name": "flow_matching"})

    class Lin(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2) if d == 2 else torch.nn.Sequential(torch.nn.Linear(2, d), torch.nn.Linear(d, 2))

        def forward(self, x, t, y=None):
            return self.lin(x)

    with torch.device("meta"):
        x, t = torch.empty(4, 2), torch.empty(4)
        same = Piecewise([Net(Lin(2), fm), Net(Lin(2), fm)], [0.5])
        assert same(x, t).shape == (4, 2) and same(x, t).device.type == "meta"
        mixed = Piecewise([Net(Lin(2), fm), Net(Lin(8), fm)], [0.5])
        with pytest.raises(RuntimeError, match="experts differ in size"):
            mixed(x, t)
        assert mixed(x, 0.7).shape == (4, 2)            # a float t still picks its expert
