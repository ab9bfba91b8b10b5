"""MoE FFNs of seed 002: TC (token choice), EC (expert choice per sample), DiffMoE (global pool)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.backbones.flops import count_parameters
from harness.backbones.size import describe
from harness.backbones.moe import (activated_parameters, eq40_activated_parameters, moe_layers, reset_routing_stats,
                                   routing_metrics)
from harness.baselines.ec_moe import ExpertChoiceMoE
from harness.baselines.tc_moe import TokenChoiceMoE
from harness.config import compose, load, validate
from harness.core.errors import ConfigError
from harness.field import Net
from harness.methods.diffmoe import DiffMoE, DiffMoEFFN
from harness.objectives import build_objective
from harness.backbones.build import build_backbone

D = 16


def tiny_dit(ffn: str, num_experts: int = 4, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    ffn_kwargs = {} if ffn == "dense" else dict(num_experts=num_experts, **kwargs)
    node = dict(name="dit", patch_size=2, hidden_size=D, depth=4, num_heads=2, ffn=ffn, ffn_every=2,
                ffn_kwargs=ffn_kwargs)
    return build_backbone(node, (1, 8, 8), 10)


def brute_force_moe(layer, x: torch.Tensor, selected: list[torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
    """Eq. 7 token by token: y_s = sum over experts i that took s of G_{s,i} E_i(x_s)."""
    y = torch.zeros_like(x)
    for i, rows in enumerate(selected):
        for s in rows.tolist():
            y[s] += probs[s, i] * layer.experts.one(i, x[s:s + 1])[0]
    return y


# ---------------------------------------------------------------- EC
def test_ec_gives_each_expert_exactly_its_capacity_per_sample() -> None:
    torch.manual_seed(0)
    B, S, N, C = 3, 24, 4, 1.5
    layer = ExpertChoiceMoE(D, num_experts=N, capacity=C).eval()
    x = torch.randn(B, S, D)
    gate, index = layer.route(x)
    k = int(S / N * C)
    assert index.shape == (B, N, k)
    for b in range(B):
        for i in range(N):
            assert len(set(index[b, i].tolist())) == k  # k distinct tokens of sample b
            affinity = torch.softmax(x[b] @ layer.router.t(), dim=-1)[:, i]
            assert set(index[b, i].tolist()) == set(affinity.argsort(descending=True)[:k].tolist())
    with torch.no_grad():
        y, _ = layer(x)
        for b in range(B):
            probs = torch.softmax(x[b] @ layer.router.t(), dim=-1)
            ref = brute_force_moe(layer, x[b], [index[b, i] for i in range(N)], probs)
            torch.testing.assert_close(y[b], ref, rtol=1e-5, atol=1e-6)
    assert layer.moe_stats()["capacity_sum"] == pytest.approx(N * B * k / (B * S))  # C = N k / S


# ---------------------------------------------------------------- DiffMoE
def test_diffmoe_pool_selection_is_top_k_over_the_flattened_batch() -> None:
    torch.manual_seed(1)
    B, S, N = 4, 16, 4
    layer = DiffMoEFFN(D, num_experts=N)
    x = torch.randn(B, S, D)
    x[0] += 3.0 * layer.router[0].detach() / layer.router[0].norm()   # sample 0 leans towards expert 0
    flat = x.reshape(B * S, D)
    probs = layer.scores(flat)
    gate, index = layer.pool_topk(probs, 1.0)
    k = B * S // N
    assert index.shape == (N, k)
    for i in range(N):
        brute = sorted(range(B * S), key=lambda s: -float(probs[s, i].detach()))[:k]
        assert set(index[i].tolist()) == set(brute)
        torch.testing.assert_close(gate[i].sort().values, probs[brute, i].sort().values)
    from_sample0 = int((index[0] < S).sum())
    assert from_sample0 > S // N  # a global pool: expert 0 takes more than its per-sample share from sample 0
    with torch.no_grad():
        y, aux = layer(x)
    ref = brute_force_moe(layer, flat, list(index), probs).reshape(B, S, D)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    assert aux["loss"] > 0


def test_diffmoe_without_predictor_infers_exactly_as_it_trains_at_c1() -> None:
    model = tiny_dit("diffmoe")
    x, t, y = torch.randn(6, 1, 8, 8), torch.rand(6), torch.randint(10, (6,))
    with torch.no_grad():
        train_out = model.train()(x, t, y)
        for layer in moe_layers(model):
            layer.configure_inference(use_predictor=False)
        eval_out = model.eval()(x, t, y)
    assert torch.equal(train_out, eval_out)
    assert routing_metrics(Net(model, None)) == {"moe_c_infer_avg": pytest.approx(1.0), "moe_c_infer_layer0": pytest.approx(1.0),
                                                 "moe_c_infer_layer1": pytest.approx(1.0)}


def test_diffmoe_threshold_is_an_ema_of_the_kth_largest_prediction() -> None:
    torch.manual_seed(2)
    layer = DiffMoEFFN(D, num_experts=4, threshold_ema=0.95)
    x = torch.randn(2, 8, D)
    layer(x)
    k = 2 * 8 // 4
    q = torch.sigmoid(layer.predictor(x.reshape(-1, D))).topk(k, dim=0).values[-1]
    torch.testing.assert_close(layer.expert_threshold.data, 0.05 * q.detach())   # from tau = 0
    before = layer.expert_threshold.detach().clone()
    layer(x)
    torch.testing.assert_close(layer.expert_threshold.data, 0.95 * before + 0.05 * q.detach())


def test_diffmoe_inference_capacity_follows_the_threshold() -> None:
    model = tiny_dit("diffmoe").eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.randint(10, (4,))
    field = Net(model, None)
    caps = {}
    for tau in (0.0, 0.5, 0.999999):
        for layer in moe_layers(model):
            layer.configure_inference(threshold=tau)
        reset_routing_stats(field)
        with torch.no_grad():
            model(x, t, y)
        caps[tau] = routing_metrics(field)["moe_c_infer_avg"]
    assert caps[0.0] == pytest.approx(4.0)                  # every token passes: C = N (seed 002 Tab. 10, tau = 0)
    assert caps[0.0] >= caps[0.5] >= caps[0.999999]
    assert caps[0.999999] < 0.5


def test_diffmoe_selection_modes_process_the_same_number_of_tokens() -> None:
    torch.manual_seed(3)
    layer = DiffMoEFFN(D, num_experts=4).eval()
    x = torch.randn(3, 8, D)
    out = {}
    for select in ("router_topk", "predicted"):
        layer.configure_inference(threshold=0.5, select=select)
        layer.reset_stats()
        with torch.no_grad():
            out[select] = layer(x)[0]
        out[select + "_c"] = layer.moe_stats()["capacity_sum"]
    assert out["router_topk_c"] == out["predicted_c"]
    assert out["router_topk"].shape == out["predicted"].shape == x.shape


def test_cfg_halves_share_one_token_pool() -> None:
    from harness.field.guided import Branch, Guided
    from harness.methods.diffmoe import PooledNet

    model = tiny_dit("diffmoe").eval()
    objective = build_objective({"name": "flow_matching"})
    field = PooledNet(model, objective)
    guided = Guided(Branch(field, "cond"), Branch(field, "null", stream=1), 1.5, num_classes=10)
    x, t, y = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5), torch.randint(10, (3,))
    reset_routing_stats(field)
    v = guided(x, t, y)
    assert all(layer.moe_stats()["forwards"] == 1 for layer in moe_layers(model))   # one pool of 2 B S tokens
    with torch.no_grad():
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]))
    cond, uncond = both.chunk(2)
    torch.testing.assert_close(v, uncond + 1.5 * (cond - uncond))


# ---------------------------------------------------------------- all three
@pytest.mark.parametrize("ffn", ["tc_moe", "ec_moe", "diffmoe"])
def test_gradients_reach_every_expert_and_the_router(ffn: str) -> None:
    model = tiny_dit(ffn).train()
    for block in model.blocks:  # adaLN-Zero gates start at 0: open them so the FFN output reaches the loss
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    x, t, y = torch.randn(16, 1, 8, 8), torch.rand(16), torch.randint(10, (16,))
    loss = model(x, t, y).square().mean() + model.last_aux_loss
    loss.backward()
    layers = moe_layers(model)
    assert len(layers) == 2                          # blocks 1 and 3 (every other block)
    for layer in layers:
        for name in ("w1", "w2"):
            grad = getattr(layer.experts, name).grad
            assert grad is not None and bool((grad.flatten(1).abs().sum(1) > 0).all()), f"{ffn}: an expert got no gradient"
        assert layer.router.grad is not None and layer.router.grad.abs().sum() > 0
        if isinstance(layer, DiffMoEFFN):
            assert layer.predictor[0].weight.grad.abs().sum() > 0
            assert layer.expert_threshold.grad is None


def test_capacity_predictor_loss_does_not_reach_the_backbone() -> None:
    """sg[x_pool] (seed 002 Eq. 11): L_CP trains the predictor only."""
    layer = DiffMoEFFN(D, num_experts=4)
    x = torch.randn(2, 8, D, requires_grad=True)
    _, aux = layer(x)
    aux["loss"].backward()
    assert x.grad is None or x.grad.abs().sum() == 0
    assert layer.router.grad is None and layer.experts.w1.grad is None


def test_single_process_forward_makes_no_collective_call(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("collective called without a process group")

    monkeypatch.setattr(torch.distributed, "all_reduce", refuse)
    assert not torch.distributed.is_initialized()
    model = tiny_dit("diffmoe").train()
    before = [layer.expert_threshold.detach().clone() for layer in moe_layers(model)]
    model(torch.randn(4, 1, 8, 8), torch.rand(4), torch.randint(10, (4,)))
    assert all(not torch.equal(b, layer.expert_threshold) for b, layer in zip(before, moe_layers(model)))


def test_tc_balance_loss_is_alpha_for_a_uniform_router_and_grows_when_it_collapses() -> None:
    N, alpha = 4, 0.01
    layer = TokenChoiceMoE(D, num_experts=N, top_k=2, aux_loss_weight=alpha).train()
    x = torch.randn(2, 32, D)
    with torch.no_grad():
        layer.router.zero_()                                 # uniform router: P_i = 1/N
    assert float(layer(x)[1]["loss"].detach()) == pytest.approx(alpha, rel=1e-6)
    e0 = torch.zeros(D)
    e0[0] = 1.0
    with torch.no_grad():
        layer.router[0] = 10.0 * e0                          # every token puts ~all its mass on expert 0
    collapsed = float(layer(0.1 * x + 3.0 * e0)[1]["loss"].detach())
    assert collapsed == pytest.approx(2 * alpha, rel=0.01)   # P_0 ~ 1, f_0 = N / K = 2 with K = 2
    torch.manual_seed(4)
    layer.init_weights()
    assert float(layer(torch.randn(2, 32, D))[1]["loss"].detach()) > 0


def test_tc_capacity_factor_drops_overflow_tokens() -> None:
    layer = TokenChoiceMoE(D, num_experts=4, top_k=1, capacity_factor=0.5).eval()
    with torch.no_grad():
        layer.router.zero_()
        layer.router[0, 0] = 10.0
        x = torch.randn(1, 16, D).abs()                    # all tokens route to expert 0
        y, _ = layer(x)
    kept = int((y.abs().sum(-1) > 0).sum())
    assert kept == 2                                        # ceil(0.5 * 16 / 4) = 2 pairs for expert 0
    assert layer.moe_stats()["capacity_sum"] == pytest.approx(2 / 16)


# ---------------------------------------------------------------- accounting
def test_activated_parameter_formulas_match_counted_parameters() -> None:
    N = 4
    moe, dense = tiny_dit("diffmoe", N), tiny_dit("dense")
    n_dense = count_parameters(dense)
    layers = moe_layers(moe)
    router = layers[0].router_parameters()                  # router + capacity predictor + thresholds
    assert router == N * D + (D * D + D + D * N + N) + N
    assert activated_parameters(moe) == n_dense + len(layers) * router
    # Eq. 40 (seed 002 App. C): exact up to the routers' share when every other block is MoE
    assert eq40_activated_parameters(moe, 1.0) == pytest.approx(n_dense + len(layers) * 2 * router / (1 + N))
    expert = layers[0].experts.expert_parameters()
    assert count_parameters(moe) == n_dense + len(layers) * ((N - 1) * expert + router)
    assert activated_parameters(moe, capacity=2.0) == n_dense + len(layers) * (router + expert)


@pytest.mark.parametrize("experiment,total", [("diffmoe_l2_e16_flow", 1.982e9), ("diffmoe_l2_e8_flow", 1.176e9),
                                              ("diffmoe_s2_e16_flow", 139e6), ("diffmoe_b2_e16_flow", 555e6)])
def test_full_scale_sizes_match_seed_table1_on_meta(experiment: str, total: float) -> None:
    cfg = load([f"experiment={experiment}", "data.root=/tmp"])
    info = describe(lambda: build_backbone(cfg["backbone"], (4, 32, 32), 1000), (4, 32, 32))
    assert abs(info["params"] / total - 1) < 0.01
    dense = describe(lambda: build_backbone({**cfg["backbone"], "ffn": "dense", "ffn_kwargs": {}}, (4, 32, 32), 1000),
                     (4, 32, 32))
    assert info["params_activated"] > dense["params"]      # activated = dense + routers and predictors
    assert info["params_activated"] < 1.03 * dense["params"]
    assert dense["gmacs"] < info["gmacs"] < 1.05 * dense["gmacs"]   # C_train = 1: the dense compute + routing


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("ffn,kwargs,key", [
    ("diffmoe", dict(capacity=0), "backbone.ffn_kwargs.capacity"),
    ("ec_moe", dict(capacity=-1.0), "backbone.ffn_kwargs.capacity"),
    ("tc_moe", dict(capacity_factor=0.0), "backbone.ffn_kwargs.capacity_factor"),
    ("tc_moe", dict(top_k=5), "backbone.ffn_kwargs.top_k"),
    ("diffmoe", dict(expert_ratio=0.03), "backbone.ffn_kwargs.expert_ratio"),
    ("ec_moe", dict(num_experts=0), "backbone.ffn_kwargs.num_experts"),
])
def test_bad_ffn_kwargs_are_one_line_config_errors(ffn: str, kwargs: dict, key: str) -> None:
    kwargs.setdefault("num_experts", 4)
    with pytest.raises(ConfigError) as err:
        tiny_dit(ffn, **kwargs)
    assert key in err.value.one_line() and "\n" not in err.value.one_line()


def test_more_experts_than_tokens_is_a_config_error() -> None:
    model = tiny_dit("ec_moe", num_experts=32)              # 16 tokens per sample
    with pytest.raises(ConfigError, match="num_experts=32"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2), None)


def test_threshold_outside_the_predictor_range_is_rejected() -> None:
    with pytest.raises(ConfigError, match="method.threshold must be in"):
        load(["experiment=diffmoe_mini_fmnist", "method.threshold=1.5"])
    with pytest.raises(ConfigError, match="backbone.ffn=dense"):
        load(["experiment=dense_moe_mini_fmnist", "method=diffmoe"])


# ---------------------------------------------------------------- method and configs
def test_diffmoe_method_shares_the_monolithic_unit_and_sets_inference() -> None:
    from harness.pipeline.assemble import method_for

    cfg = load(["experiment=diffmoe_mini_fmnist", "method.threshold=0.4"])
    mono = validate(compose(["experiment=diffmoe_mini_fmnist", "method=monolithic"]))
    method = method_for(cfg)
    assert isinstance(method, DiffMoE)
    assert method.units()["model"].hash == method_for(mono).units()["model"].hash   # a threshold sweep never retrains
    model = build_backbone(cfg["backbone"], (1, 28, 28), 10).eval()
    method.assemble({"model": (model, build_objective(cfg["objective"]))})
    assert all(layer.fixed_threshold == 0.4 for layer in moe_layers(model))


@pytest.mark.parametrize("experiment", ["dense_moe_mini_fmnist", "tc_moe_mini_fmnist", "ec_moe_mini_fmnist",
                                        "diffmoe_mini_fmnist"])
def test_mini_twins_activate_the_dense_size_plus_at_most_5_percent(experiment: str) -> None:
    """Not equal: routers and capacity predictors come on top (see the hand count below)."""
    cfg = load([f"experiment={experiment}"])
    model = build_backbone(cfg["backbone"], (1, 28, 28), 10)
    dense = build_backbone(load(["experiment=dense_moe_mini_fmnist"])["backbone"], (1, 28, 28), 10)
    assert count_parameters(dense) <= activated_parameters(model) < 1.05 * count_parameters(dense)


# ---------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import json

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(tiny_dit("diffmoe").train())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(100 + rank)                # each rank sees its own data
    for _ in range(2):
        x, t, y = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g), torch.randint(10, (4,), generator=g)
        loss = model(x, t, y).square().mean() + model.module.last_aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tau = torch.cat([layer.expert_threshold.detach() for layer in moe_layers(model.module)])
    gathered = [torch.zeros_like(tau) for _ in range(world)]
    torch.distributed.all_gather(gathered, tau)
    if rank == 0:
        with open(out, "w") as f:
            json.dump([g.tolist() for g in gathered], f)
    # Release DDP's reducer (it holds the gloo group and its worker threads) while every rank is
    # still alive: tearing it down at interpreter exit, after destroy_process_group, aborted rank 0
    # once in CI ("terminate called without an active exception").
    torch.distributed.barrier()
    del model, opt
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~60 s on the shared 2-core machine
def test_diffmoe_trains_under_ddp_with_rank_averaged_thresholds(tmp_path) -> None:
    import json

    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "tau.json")), nprocs=2)
    rank0, rank1 = (torch.tensor(v) for v in json.loads((tmp_path / "tau.json").read_text()))
    assert torch.equal(rank0, rank1)          # thresholds averaged over ranks although the data differ
    assert bool((rank0 > 0).all())


def test_measured_gflops_follow_the_inference_capacity() -> None:
    from harness.backbones.moe import measured_gflops

    model = tiny_dit("diffmoe", num_experts=4).eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.randint(10, (4,))
    gflops = {}
    for tau in (None, 0.0):
        for layer in moe_layers(model):
            layer.configure_inference(threshold=tau, use_predictor=tau is not None)
        gflops[tau] = measured_gflops(model, x, t, y)
    expert = 2 * 2 * D * 4 * D * 16 / 1e9               # one expert on the 16 tokens of one image: 2 matmuls, 2 FLOPs/MAC
    predictor = 2 * (D * D + D * 4) * 16 / 1e9          # the capacity predictor runs only on the dynamic path
    # 2 MoE layers, each with N - 1 = 3 more experts' worth of tokens (C = N at tau = 0) plus the predictor
    assert gflops[0.0] - gflops[None] == pytest.approx(2 * (3 * expert + predictor), rel=1e-6)


# ---------------------------------------------------------------- issue 16 (seed 002 fidelity)
def test_ec_inference_routing_is_validated_with_one_line_errors() -> None:
    for build in (lambda: load(["experiment=ec_moe_mini_fmnist", "+backbone.ffn_kwargs.inference_routing=dynamic"]),
                  lambda: tiny_dit("ec_moe", inference_routing="dynamic")):
        with pytest.raises(ConfigError) as err:
            build()
        line = err.value.one_line()
        assert "backbone.ffn_kwargs.inference_routing" in line and "dynamic_intra_sample" in line and "\n" not in line
    load(["experiment=ec_moe_mini_fmnist", "+backbone.ffn_kwargs.inference_routing=dynamic_intra_sample"])


def test_ec_dynamic_intra_sample_routing_varies_capacity_per_sample_within_samples() -> None:
    """Tab. 8 "L2: Local Dynamic Intra-sample Routing": K_{b,i} from the predictor, top-K_{b,i} of sample b only."""
    torch.manual_seed(4)
    B, S, N = 3, 16, 4
    layer = ExpertChoiceMoE(D, num_experts=N, inference_routing="dynamic_intra_sample")
    x = torch.randn(B, S, D)
    x[0] *= 3.0                                            # samples that differ, so their capacities differ
    _, aux = layer.train()(x)                              # training: EC's per-sample top-k, plus L_CP and tau
    k = S // N
    cp = layer.predictor(x.reshape(-1, D))
    q = torch.sigmoid(cp).topk(B * k, dim=0).values[-1]     # the (B k)-th largest prediction of the batch
    torch.testing.assert_close(layer.expert_threshold.data, 0.05 * q.detach())
    assert aux["loss"] > 0
    layer.eval()
    with torch.no_grad():
        layer.expert_threshold.copy_(torch.sigmoid(cp).median(0).values)   # about half the tokens pass
        y, _ = layer(x)
        passes = (torch.sigmoid(cp) > layer.expert_threshold).reshape(B, S, N)
        ref = torch.zeros_like(x)
        for b in range(B):
            probs = torch.softmax(x[b] @ layer.router.t(), dim=-1)
            chosen = [probs[:, i].argsort(descending=True)[:int(passes[b, :, i].sum())] for i in range(N)]
            ref[b] = brute_force_moe(layer, x[b], chosen, probs)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    per_sample = passes.sum((1, 2)).double() / S
    assert len(set(per_sample.tolist())) > 1               # dynamic: samples get different capacities
    assert layer.moe_stats()["capacity_sum"] == pytest.approx(float(per_sample.mean()))
    # the static twin has no predictor; its routing is unchanged
    static = ExpertChoiceMoE(D, num_experts=N)
    assert not hasattr(static, "predictor") and static.inference_routing == "static_topk"


def test_ec_dynamic_paper_row_matches_its_config_and_the_static_row_does_not() -> None:
    from pathlib import Path

    import pandas as pd

    from harness.tables.compare import match_mask
    from harness.tables.paper import load_paper_file
    from harness.track.store import flatten

    tables = load_paper_file(Path(__file__).resolve().parents[1] / "results/paper/seed002_diffmoe.yaml")
    ec = {e.value: e.match for t in tables if t.table == "Table 8" for e in t.entries
          if e.row.startswith("EC-DiT") and e.metric == "fid"}          # the FID column (activated params beside it)
    assert set(ec) == {"16.12", "23.74"}
    for routing, want in ((None, "16.12"), ("dynamic_intra_sample", "23.74")):
        extra = [] if routing is None else [f"+backbone.ffn_kwargs.inference_routing={routing}"]
        cfg = load(["experiment=ec_moe_mini_fmnist", "backbone.ffn_kwargs.num_experts=16", *extra])
        run = pd.DataFrame([{f"params.{k}": (None if v is None else str(v)) for k, v in flatten(cfg).items()}])
        hits = {value for value, match in ec.items() if bool(match_mask(run, match).iloc[0])}
        assert hits == {want}


def _predicted_layer(seed: int = 5) -> DiffMoEFFN:
    torch.manual_seed(seed)
    layer = DiffMoEFFN(D, num_experts=4).eval()
    layer.configure_inference(threshold=0.5, select="predicted")   # rows = exactly the tokens that pass
    return layer


def test_capacity_is_logged_per_layer_per_time_bin_and_per_class() -> None:
    """Fig. 1c/d, 12-14: C_b = processed (token, expert) pairs of sample b / S, averaged per t bin and label."""
    from harness.backbones.moe import routing_curves, routing_totals

    layer = _predicted_layer()
    B, S = 4, 8
    x = torch.randn(B, S, D) * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(B, 1, 1)
    t, y = torch.tensor([0.05, 0.05, 0.51, 0.99]), torch.tensor([3, 7, 3, 10])   # 10 = the null class of 10
    with torch.no_grad():
        layer(x, {"t": t, "y": y})
        layer(x[:2], {"t": torch.tensor(0.55), "y": None})                      # a scalar t, no labels
        c_b = (torch.sigmoid(layer.predictor(x.reshape(-1, D))) > 0.5).reshape(B, S, -1).sum((1, 2)).double() / S
    c = c_b.tolist()
    curves = routing_curves(layer, num_classes=10)
    by_t = curves["by_t"]
    assert curves["t_bins"][:2] == [0.0, 0.1] and len(by_t["c"]) == 10
    assert by_t["c"][0] == pytest.approx((c[0] + c[1]) / 2) and by_t["n"][0] == 2
    assert by_t["c"][5] == pytest.approx((c[2] + c[0] + c[1]) / 3) and by_t["n"][5] == 3   # t = 0.51 and 0.55
    assert by_t["c"][9] == pytest.approx(c[3]) and by_t["c"][3] is None
    assert curves["by_class"]["3"] == {"c": pytest.approx((c[0] + c[2]) / 2), "n": 2}
    assert curves["by_class"]["7"]["c"] == pytest.approx(c[1])
    assert curves["by_class"]["null"]["c"] == pytest.approx(c[3])
    assert curves["by_class"]["none"] == {"c": pytest.approx((c[0] + c[1]) / 2), "n": 2}
    assert curves["by_layer_t"] == [by_t["c"]]
    metrics = routing_metrics(layer)
    assert metrics["moe_c_infer_layer0"] == metrics["moe_c_infer_avg"] == pytest.approx(
        (sum(c) / B + (c[0] + c[1]) / 2) / 2)                                  # Eq. 15: mean over forwards
    assert len(routing_totals(layer, 10)) == len(routing_totals(_predicted_layer(), 10))   # same on every rank


def test_routing_totals_sum_over_ranks_like_one_process() -> None:
    """The pipeline all-sums routing_totals over ranks: two shards then read as one process that saw both."""
    from harness.backbones.moe import routing_curves, routing_totals

    x, t, y = torch.randn(6, 8, D), torch.rand(6), torch.randint(4, (6,))
    whole, rank0, rank1 = _predicted_layer(), _predicted_layer(), _predicted_layer()
    with torch.no_grad():
        whole(x[:3], {"t": t[:3], "y": y[:3]})
        whole(x[3:], {"t": t[3:], "y": y[3:]})
        rank0(x[:3], {"t": t[:3], "y": y[:3]})
        rank1(x[3:], {"t": t[3:], "y": y[3:]})
    summed = [a + b for a, b in zip(routing_totals(rank0, 4), routing_totals(rank1, 4))]
    assert routing_metrics(whole, None, 4) == pytest.approx(routing_metrics(whole, summed, 4))
    assert routing_curves(whole, None, 4) == routing_curves(whole, summed, 4)


def test_evaluation_logs_per_layer_capacity_and_the_curves_artifact(monkeypatch) -> None:
    """harness/evaluate/pipeline.py logs what routing_metrics / routing_curves return (the engine names no method)."""
    import harness.evaluate.pipeline as pipeline

    model = tiny_dit("diffmoe").eval()
    field = Net(model, build_objective({"name": "flow_matching"}))

    class Pass:
        nfe, n, grid, features = 1, 4, None, None

    def fake_sample_pass(field, cfg, dataset, **kw):
        with torch.no_grad():
            field.velocity(torch.randn(4, 1, 8, 8), torch.full((4,), 0.25), torch.tensor([1, 2, 2, 10]))
        return Pass()

    class Data:
        num_classes = 10

    class Datasets:
        def get(self, node):
            return Data()

    logged = {}

    class Tracker:
        def log_metrics(self, run_id, metrics):
            logged["metrics"] = metrics

        def log_params(self, run_id, params):
            pass

        def log_dict(self, run_id, obj, name):
            logged[name] = obj

    monkeypatch.setattr(pipeline, "sample_pass", fake_sample_pass)
    monkeypatch.setattr(pipeline, "check_metric_reference", lambda *a: None)
    monkeypatch.setattr(pipeline, "check_exact_metrics", lambda *a: None)
    monkeypatch.setattr(pipeline, "exact_metrics", lambda *a, **k: ({}, {}))
    cfg = {"eval": {"metrics": [], "device": "cpu"}, "data": {"name": "x"}}
    monkeypatch.setattr(pipeline, "eval_device", lambda cfg: torch.device("cpu"))
    result = pipeline.evaluate_field(field, cfg, datasets=Datasets(), tracker=Tracker(), run_id="r")
    assert {"moe_c_infer_avg", "moe_c_infer_layer0", "moe_c_infer_layer1"} <= set(logged["metrics"])
    curves = logged["moe_capacity.json"]
    assert curves == result["moe_capacity"] and curves["layers"] == 2
    assert curves["by_t"]["n"][2] == 8                     # 4 samples x 2 layers in the bin of t = 0.25
    assert set(curves["by_class"]) == {"1", "2", "null"}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_describe_counts_the_capacity_predictor_in_activated_params_and_gmacs(mode: str) -> None:
    """Hand count, tiny DiT (D = 16, 16 tokens, 2 DiffMoE layers of N = 4): the predictor is activated by every token."""
    N, S, L = 4, 16, 2
    moe, dense = tiny_dit("diffmoe", N), tiny_dit("dense")
    getattr(moe, mode)()
    getattr(dense, mode)()
    info, base = describe(moe, (1, 8, 8)), describe(dense, (1, 8, 8))
    router, predictor, thresholds = N * D, (D * D + D) + (D * N + N), N
    assert info["params_routing"] == L * (router + predictor + thresholds)
    assert info["params_activated"] == base["params"] + L * (router + predictor + thresholds)
    assert info["params_activated"] > base["params_activated"]            # not "equal activated parameters"
    # k = S / N tokens per expert at C_train = 1: the experts cost the dense FFN; router + predictor come on top
    assert info["gmacs"] - base["gmacs"] == pytest.approx(L * S * (D * N + D * D + D * N) / 1e9, rel=1e-9)


def test_mini_twins_activated_size_differs_by_the_routing_parameters() -> None:
    dense = describe(lambda: build_backbone(load(["experiment=dense_moe_mini_fmnist"])["backbone"], (1, 28, 28), 10),
                     (1, 28, 28))
    moe = describe(lambda: build_backbone(load(["experiment=diffmoe_mini_fmnist"])["backbone"], (1, 28, 28), 10),
                   (1, 28, 28))
    assert moe["params_activated"] / dense["params"] - 1 == pytest.approx(0.0275, abs=5e-4)   # +2.7 %
    assert moe["gmacs"] / dense["gmacs"] - 1 == pytest.approx(0.0346, abs=5e-4)              # +3.4 %


@pytest.mark.parametrize("overrides,backbone", [(["method=diffmoe"], "unet"),
                                                (["method=diffmoe", "backbone=unet_tiny"], "unet")])
def test_diffmoe_on_a_backbone_without_diffmoe_layers_is_a_config_error(overrides: list, backbone: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(overrides)
    line = err.value.one_line()
    assert f"backbone={backbone}" in line and "backbone.ffn=diffmoe" in line and "method=monolithic" in line
    assert "\n" not in line


def test_the_threshold_sweep_covers_every_threshold_of_table_10():
    """Seed 002 Tab. 10 (interval search vs the dynamic threshold): each threshold it prints, the U-shaped minimum at
    1e-3 and the small log-spaced values included, is a cell of sweeps/diffmoe_threshold.yaml (null = dynamic)."""
    import yaml

    from harness.sweep.spec import read_spec

    root = Path(__file__).parents[1]
    tables = yaml.safe_load((root / "results/paper/seed002_diffmoe.yaml").read_text())["tables"]
    (t10,) = [t for t in tables if t.get("table") == "Table 10"]
    paper = {e["match"]["method.threshold"] for e in t10["entries"] if e.get("match")}
    cells = set(read_spec(root / "sweeps/diffmoe_threshold.yaml").grid["method.threshold"])
    as_float = lambda v: None if v in (None, "null", "None") else float(v)   # noqa: E731
    assert {as_float(v) for v in paper} - {as_float(v) for v in cells} == set()
    assert len(paper) >= 20
