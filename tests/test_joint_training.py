"""Seed 000, Alg. 1 as one loop: one expert per batch, each expert stepped only on its own batches."""

import pytest
import torch

from tests.configs import load_in
from harness.backbones.time_experts import TimeExperts
from harness.data.base import build_dataset
from harness.core.errors import ConfigError
from harness.pipeline.assemble import method_for
from harness.pipeline.experiment import run_experiment
from harness.field import Net, Piecewise
from harness.objectives import build_objective
from harness.objectives.time_samplers import PerBatchExpert, Uniform
from harness.train import draw_batch, train_unit
from harness.train.checkpoint import load_checkpoint
from harness.backbones.build import build_backbone

BASE = ["experiment=gmm_mini", "run.progress=false", "train.batch_size=16", "eval.n_samples=100", "eval.reference_n=100"]


def cfg_for(tmp_path, *extra):
    return load_in(tmp_path, *BASE, *extra)


def test_per_batch_sampler_keeps_a_batch_in_one_interval_and_picks_experts_uniformly():
    sampler = PerBatchExpert([0.3, 0.8])
    g = torch.Generator().manual_seed(0)
    counts = [0, 0, 0]
    edges = [0.0, 0.3, 0.8, 1.0]
    for _ in range(3000):
        u = torch.rand(8, generator=g, dtype=torch.float64)
        i = sampler.expert_of_batch(u)
        t = sampler(u)
        assert bool(((t >= edges[i]) & (t < edges[i + 1])).all())
        counts[i] += 1
    # Alg. 1 samples the model index uniformly: 1000 each, binomial sd ~26
    assert all(abs(c - 1000) < 120 for c in counts), counts


def test_per_batch_sampler_reuses_the_draws_of_an_independent_expert():
    """Paired draws: the batch's t (after the first) equal what expert i's own unit would draw from u."""
    sampler = PerBatchExpert([0.5])
    u = torch.tensor([0.75, 0.1, 0.6, 0.9], dtype=torch.float64)
    t = sampler(u)
    independent = Uniform()(u, (0.5, 1.0))
    assert torch.equal(t[1:], independent[1:])
    assert float(t[0]) == pytest.approx(0.5 + 0.5 * 0.5)  # u_0 rescaled: 0.75 * 2 - 1 = 0.5


def test_time_experts_forward_equals_piecewise_of_its_experts():
    torch.manual_seed(0)
    model = TimeExperts((2,), 0, expert={"name": "mlp", "width": 16, "depth": 2}, boundaries=[0.25, 0.6]).eval()
    objective = build_objective({"name": "flow_matching"})
    pieces = Piecewise([Net(e, objective) for e in model.experts], [0.25, 0.6])
    x = torch.randn(9, 2)
    t = torch.tensor([0.0, 0.1, 0.25, 0.3, 0.59, 0.6, 0.7, 0.99, 1.0])
    with torch.no_grad():
        assert torch.allclose(Net(model, objective)(x, t), pieces(x, t), atol=1e-6)
        for i, e in enumerate(model.experts):
            sel = model.expert_index(t) == i
            assert torch.equal(model(x[sel], t[sel]), e(x[sel], t[sel]))


def test_joint_unit_steps_each_expert_exactly_on_its_batches(tmp_path):
    cfg = cfg_for(tmp_path, "method=naive_split", "method.n=3", "method.training=joint", "train.steps=12",
                  "train.checkpoint_every=5")
    spec = method_for(cfg).units()["experts"]
    assert spec.train["steps"] == 36  # per_expert: N x train.steps, ~train.steps per expert in expectation
    dataset = build_dataset(spec.data)
    objective = build_objective(spec.objective)
    steps = 10
    record = train_unit(spec, workdir=tmp_path, dataset=dataset, stop_after=steps, progress=False)
    assert record["finished"] is False
    chosen = []
    for step in range(steps):
        _, _, t, _ = draw_batch(dataset, step, seed=int(spec.train["seed"]), batch_size=16, interval=spec.interval,
                                objective=objective, label_dropout=0.0)
        idx = torch.bucketize(t.double(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), right=True)
        assert bool((idx == idx[0]).all())
        chosen.append(int(idx[0]))
    ckpt = load_checkpoint(sorted(spec.directory(tmp_path).glob("ckpt_*.pt"))[-1])
    state = ckpt["optimizer"]["state"]  # keyed by position in model.parameters()
    params = [n for n, _ in build_backbone(spec.backbone, tuple(dataset.shape), dataset.num_classes).named_parameters()]
    for i in range(3):
        first = params.index(next(n for n in params if n.startswith(f"experts.{i}.")))
        count = chosen.count(i)
        if count == 0:
            assert first not in state  # never stepped: AdamW has no state for it
        else:
            assert int(state[first]["step"]) == count, (i, chosen)


def test_joint_cbs_runs_end_to_end_and_records_its_training(tmp_path):
    cfg = cfg_for(tmp_path, "method=cbs", "method.n=2", "method.training=joint", "split.field=exact", "train.steps=10")
    result = run_experiment(cfg)
    assert result["units_trained"] == 1
    assert method_for(cfg).describe()["training"] == "joint"
    assert all(v == v for v in result["metrics"].values())  # finite, not NaN


def test_unknown_training_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="method.training must be one of independent, joint"):
        cfg_for(tmp_path, "method=cbs", "method.training=together")
