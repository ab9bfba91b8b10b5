"""DDM and heterogeneous DDM (seed 003): conversion, mixture, partition, router, units and bad input."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.configs import load_in
from harness.config import load
from harness.data.gaussian_mixture import GaussianMixture
from harness.core.errors import ConfigError
from harness.pipeline.assemble import field_classes, method_for
from harness.field import Exact
from harness.field.mixture import FunctionRouter, Mixture, NetRouter, ThresholdRouter, mixing_weights
from harness.objectives.conversions import damping, damping_eq31
from harness.objectives.schedules import Cosine
from harness.clusters.partition import assign, hierarchical_kmeans, kmeans
from tests.gaussian import linear_velocity, vp_posteriors

MU, S = 0.7, 0.4
GMM = ["data=gaussian_mixture", "data.n=400", "data.means=[[-3.0,0.0],[3.0,0.0]]", "data.stds=[0.4,0.4]",
       "backbone=mlp_tiny", "eval=fd_raw", "train.batch_size=128", "train.lr=1e-3", "train.label_dropout=0.0",
       "run.progress=false", "method.router_backbone={name: router, width: 64, depth: 2, time_dim: 32}"]


def cfg_for(tmp_path, *extra):
    return load_in(tmp_path, *GMM, *extra)


class ExactEps(torch.nn.Module):
    """The exact epsilon-predictor of x0 ~ N(MU, S^2 I) on the cosine path, called as net(x_tau, tau, y)."""

    def forward(self, x, tau, y=None):
        alpha, sigma = Cosine().alpha_sigma(tau)
        return vp_posteriors(x, alpha, sigma, MU, S)[1]


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------- heterogeneous experts: eps -> velocity
def hetero_expert(tmp_path, *ddpm_overrides):
    m = method_for(cfg_for(tmp_path, "method=hetero_ddm", "method.k=2", "method.ddpm_experts=[0]", *ddpm_overrides))
    return m.expert_field(0, (ExactEps(), None))


def test_converted_eps_expert_is_the_exact_velocity_on_gaussian_data(tmp_path, float64):
    """snr_aligned conversion of the exact cosine-schedule eps-model = the exact linear-path velocity."""
    field = hetero_expert(tmp_path, "method.ddpm_objective.conversion=snr_aligned", "method.ddpm_objective.clamp=null")
    g = torch.Generator().manual_seed(0)
    x, t = 1.5 * torch.randn(256, 3, generator=g), 0.02 + 0.96 * torch.rand(256, generator=g)
    assert torch.allclose(field(x, t), linear_velocity(x, t, MU, S), atol=1e-9, rtol=1e-9)


def test_seed003_conversion_is_the_cosine_path_velocity_times_the_chosen_damping(tmp_path, float64):
    """Eq. 24 on the DDPM's own path, x0_hat from Eq. 23 (no clamp, alpha_min 0 here), damped by Eq. 31."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(128, 3, generator=g), 0.2 + 0.79 * torch.rand(128, generator=g)
    tau = 1 - t
    alpha, sigma = Cosine().alpha_sigma(tau)
    x0, eps = vp_posteriors(x, alpha, sigma, MU, S)
    da, ds = Cosine().derivatives(tau)
    exact = -(da[:, None] * x0 + ds[:, None] * eps)                      # dx/dt, t = 1 - tau
    common = ("method.ddpm_objective.conversion=seed003", "method.ddpm_objective.clamp=null",
              "method.ddpm_objective.alpha_min=0.0")
    undamped = hetero_expert(tmp_path, *common, "method.ddpm_objective.damping=none")(x, t)
    assert torch.allclose(undamped, exact, atol=1e-9)
    literal = hetero_expert(tmp_path, *common, "method.ddpm_objective.damping=literal")(x, t)
    assert torch.equal(literal, undamped)                                # Sec. 6.2 as printed: identity on [0, 1]
    eq31 = hetero_expert(tmp_path, *common, "method.ddpm_objective.damping=eq31")(x, t)
    assert torch.allclose(eq31, damping_eq31(tau)[:, None] * exact, atol=1e-9)


def test_damping_forms():
    tau = torch.tensor([0.0, 0.3, 0.6, 0.61, 0.85, 0.86, 1.0])
    assert damping_eq31(tau).tolist() == pytest.approx([0.96, 0.96, 0.96, 0.93, 0.93, 0.88, 0.88])
    assert bool((damping(torch.linspace(0, 1, 101)) == 1.0).all())       # the literal sigmoid never damps on [0, 1]
    assert float(damping(torch.tensor([1.2]))) < 1.0


# ---------------------------------------------------------------- the Mixture field
MIX = GaussianMixture([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], [0.5, 0.6, 0.4], [0.3, 0.3, 0.4])


def cluster_fields():
    return [Exact(lambda x, t, y, k=k: MIX.exact_velocity_conditional(x, t, torch.full((len(x),), k))) for k in range(3)]


def perfect_router():
    return FunctionRouter(MIX.responsibilities, 3)


def path_points(n=600, lo=0.0, hi=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, _ = MIX.sample(n, g)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (t[:, None] * x1.double() + (1 - t[:, None]) * x0), t


def test_full_mixing_of_exact_cluster_fields_is_the_exact_marginal_field_everywhere():
    """Seed 003, Eq. 1 with the exact posterior p(k | x_t) is the exact mixture velocity."""
    x, t = path_points()
    v = Mixture(cluster_fields(), perfect_router(), "full")(x, t)
    assert torch.allclose(v, MIX.exact_velocity(x, t), atol=1e-10)


def test_top1_of_exact_cluster_fields_equals_the_exact_field_where_clusters_separate():
    x, t = path_points()
    top1 = Mixture(cluster_fields(), perfect_router(), "top1")(x, t)
    exact = MIX.exact_velocity(x, t)
    p = MIX.responsibilities(x, t)
    per_k = torch.stack([f(x, t) for f in cluster_fields()], 1)          # (N, K, D)
    spread = (per_k[:, :, None] - per_k[:, None]).norm(dim=-1).amax((1, 2))
    # everywhere: the error is bounded by the posterior mass top-1 drops times the experts' spread
    err = (top1 - exact).norm(dim=1)
    assert bool((err <= (1 - p.max(1).values) * spread + 1e-9).all())
    # where the clusters are separated (near the data, t >= 0.8) top-1 is exact to 1e-6
    near = t >= 0.8
    assert near.sum() > 50 and float(err[near].max()) < 1e-6
    # near the noise (t < 0.2) it is not: the router's choice is uncertain there
    assert float(err[t < 0.2].max()) > 1e-2


@pytest.mark.parametrize("mode,k", [("full", 3), ("topk", 2), ("topk", 3), ("top1", 1)])
def test_mixing_weights_are_a_renormalised_restriction_of_the_router_posterior(mode, k):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 5, generator=g), 1)
    w = mixing_weights(probs, mode, top_k=k)
    assert torch.allclose(w.sum(1), torch.ones(500), atol=1e-6) and bool((w >= 0).all())
    kept = w > 0
    expect = 5 if mode == "full" else k
    assert bool((kept.sum(1) == expect).all())
    # the kept experts are the most probable ones, with weights proportional to their probabilities
    assert bool((probs[kept].reshape(500, -1).min(1).values >= probs.masked_fill(kept, -1).max(1).values).all())
    assert torch.allclose(w[kept], (probs * kept / (probs * kept).sum(1, keepdim=True))[kept], atol=1e-6)
    if mode == "top1":
        assert torch.equal(w.argmax(1), probs.argmax(1))


def test_top1_evaluates_each_expert_only_on_its_own_elements():
    x, t = path_points(n=200)
    mix = Mixture(cluster_fields(), perfect_router(), "top1")
    mix(x, t)
    assert int(mix.calls.sum()) == 200
    full = Mixture(cluster_fields(), perfect_router(), "full")
    full(x, t)
    assert int(full.calls.sum()) == 600


class CountingRouterNet(torch.nn.Module):
    """A small router network that counts its forwards (the cost the mixture's router cache saves)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, k, dtype=torch.float64)
        self.forwards = 0

    def forward(self, x, t, y=None):
        assert y is None                                       # seed 003 Eq. 2: the router never sees the label
        self.forwards += 1
        return self.lin(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("guidance", ["cfg", "icg"])
def test_guided_mixture_routes_once_per_nfe_and_samples_exactly_as_two_separate_mixtures(guidance):
    """CFG / ICG over a Top-1 DDM: both branches route alike (the router reads (x_t, t) only), so one router forward
    per NFE gives bit for bit the samples of a guided field whose branches route on their own (two mixtures)."""
    from harness.field.guided import Branch, Guided
    from harness.sample.ode import Euler

    torch.manual_seed(0)
    net = CountingRouterNet()
    experts = [Exact(lambda x, t, y, k=k: MIX.exact_velocity_conditional(x, t, torch.full((len(x),), k))
                     + (0.0 if y is None else 0.1 * (y[:, None].to(x.dtype) + 1))) for k in range(3)]
    weak_label = "null" if guidance == "cfg" else "random"

    def guided(strong_mix, weak_mix):
        return Guided(Branch(strong_mix), Branch(weak_mix, weak_label, stream=1), 2.0, num_classes=3, seed=7)

    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(64) % 3
    shared = Mixture(experts, NetRouter(net, 3), "top1")
    out_shared, nfe = Euler(steps=10)(guided(shared, shared), x0, y)
    forwards_shared, net.forwards = net.forwards, 0
    out_separate, _ = Euler(steps=10)(guided(Mixture(experts, NetRouter(net, 3), "top1"),
                                             Mixture(experts, NetRouter(net, 3), "top1")), x0, y)
    assert torch.equal(out_shared, out_separate)
    assert nfe == 10 and forwards_shared == 10 and net.forwards == 20 and shared.router_calls == 10
    # an in-place change of x between calls is seen: the cached weights are not reused
    x, t = path_points(n=8)
    shared(x, t)
    x.mul_(-1.0)
    assert torch.equal(shared(x, t), Mixture(experts, NetRouter(net, 3), "top1")(x, t)) and shared.router_calls == 12


def test_threshold_router_switches_at_the_seeds_native_time():
    """Seed 003, Sec. 3.3.1: native t' <= tau -> low-noise expert; harness t = 1 - t'."""
    r = ThresholdRouter(0.3, low_noise=1, high_noise=0)
    t = torch.tensor([0.0, 0.5, 0.69, 0.71, 0.9, 1.0])          # (exactly t = 0.7 is float round-off either way)
    assert r.probs(torch.zeros(6, 2), t).argmax(1).tolist() == [0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------- partition and units
def test_kmeans_recovers_separated_components_and_is_deterministic():
    g = torch.Generator().manual_seed(3)
    x, y = MIX.sample(900, g)
    ids, centroids = kmeans(x, 3, seed=0)
    again, _ = kmeans(x, 3, seed=0)
    assert torch.equal(ids, again)
    # a bijection between clusters and components, agreeing on > 99 % of the points
    agree = max(float((torch.tensor(perm)[ids] == y).double().mean()) for perm in
                __import__("itertools").permutations(range(3)))
    assert agree > 0.99
    assert torch.equal(assign(x, centroids), ids)


def test_hierarchical_kmeans_merges_fine_groups_by_size_into_the_components():
    """Seed 003 Sec. 6.1's two stages on three separated blobs of unequal size: every fine group lies inside
    one blob, so the coarse clusters are the blobs and each coarse centroid is the mean of its blob's items
    (it would not be if the fine centroids were merged without weighting them by their groups' sizes)."""
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[-8.0, 0.0], [8.0, 0.0], [0.0, 12.0]])
    sizes = [600, 150, 60]
    x = torch.cat([c + torch.randn(n, 2, generator=g) * torch.tensor([2.0, 0.3]) for c, n in zip(centres, sizes)])
    y = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    ids, centroids = hierarchical_kmeans(x, 3, 24, seed=0)
    perm = {int(ids[y == i].mode().values): i for i in range(3)}
    assert sorted(perm.values()) == [0, 1, 2]
    assert torch.equal(torch.tensor([perm[int(i)] for i in ids]), y)
    for c, i in perm.items():
        assert torch.allclose(centroids[c].double(), x[y == i].double().mean(0), atol=1e-5)
    unweighted, _ = kmeans(x, 24, seed=0)
    assert len(set(unweighted.tolist())) == 24                      # the fine stage really had 24 groups
    again, _ = hierarchical_kmeans(x, 3, 24, seed=0)
    assert torch.equal(ids, again)


def test_hierarchical_clustering_changes_the_hash_and_bad_fine_k_is_a_config_error(tmp_path):
    flat = method_for(cfg_for(tmp_path, "method=ddm", "method.k=2"))
    hier = method_for(cfg_for(tmp_path, "method=ddm", "method.k=2", "method.fine_k=8"))
    assert hier.clustering.hash != flat.clustering.hash and hier.clustering.provenance["fine_k"] == 8
    assert sum(hier.clustering.counts) == 400 and min(hier.clustering.counts) > 0
    with pytest.raises(ConfigError, match=r"method.fine_k=2 must exceed method.k=2"):
        cfg_for(tmp_path, "method=ddm", "method.k=2", "method.fine_k=2")
    with pytest.raises(ConfigError, match=r"method.fine_k=500 exceeds the 400 items"):
        cfg_for(tmp_path, "method=ddm", "method.k=2", "method.fine_k=500", "data.n=400")


def test_cluster_datasets_partition_the_data_and_router_labels_are_the_ids(tmp_path):
    from harness.data.base import build_dataset

    m = method_for(cfg_for(tmp_path, "method=ddm", "method.k=2"))
    units = m.units()
    experts = [build_dataset(units[f"expert{i}"].data) for i in range(2)]
    router = build_dataset(units["router"].data)
    assert sum(len(e) for e in experts) == len(router) == 400
    assert [len(e) for e in experts] == m.clustering.counts
    assert all(e.num_classes == 0 for e in experts) and router.num_classes == 2
    assert torch.equal(router.y, torch.from_numpy(m.clustering.ids))
    # the experts' rows are exactly the router's rows of their cluster
    for i, e in enumerate(experts):
        assert torch.equal(e.x, router.x[router.y == i])


def test_unit_hashes_follow_the_clustering_and_ignore_sampling_choices(tmp_path):
    base = method_for(cfg_for(tmp_path, "method=hetero_ddm", "method.k=2"))
    hashes = {r: u.hash for r, u in base.units().items()}
    # mixing mode and the eps -> velocity conversion are sampling-time: every unit is reused
    same = method_for(cfg_for(tmp_path, "method=hetero_ddm", "method.k=2", "method.mixing=full",
                              "method.ddpm_objective.conversion=snr_aligned", "method.ddpm_objective.damping=none"))
    assert {r: u.hash for r, u in same.units().items()} == hashes
    # another feature source changes the clustering hash, hence every expert's and the router's unit
    other = method_for(cfg_for(tmp_path, "method=hetero_ddm", "method.k=2", "method.metric=cosine"))
    assert other.clustering.hash != base.clustering.hash
    assert all(u.hash != hashes[r] for r, u in other.units().items())
    # homogeneous vs heterogeneous: only the DDPM expert differs
    homo = method_for(cfg_for(tmp_path, "method=ddm", "method.k=2"))
    diff = [r for r, u in homo.units().items() if u.hash != hashes[r]]
    assert diff == ["expert0"] and base.units()["expert0"].objective["name"] == "ddpm"


def test_budgets_split_steps_or_batch_and_keep_the_monolithic_flops(tmp_path):
    base = ("method=ddm", "method.k=4", "train.steps=200", "train.batch_size=128")
    units = {b: method_for(cfg_for(tmp_path, *base, f"method.budget={b}")).units()
             for b in ("per_expert", "equal_total", "equal_total_batch")}
    items = {b: sum(u.train["steps"] * u.train["batch_size"] for r, u in us.items() if r != "router")
             for b, us in units.items()}
    assert items == {"per_expert": 4 * 200 * 128, "equal_total": 200 * 128, "equal_total_batch": 200 * 128}
    assert units["equal_total_batch"]["expert0"].train["batch_size"] == 32          # seed 003: 256 / 8 = 32
    assert units["equal_total_batch"]["expert0"].train["steps"] == 200
    assert units["equal_total_batch"]["router"].hash == units["per_expert"]["router"].hash   # the router is extra
    with pytest.raises(ConfigError, match="equal_total_batch splits train.batch_size=3 over k=4"):
        cfg_for(tmp_path, "method=ddm", "method.k=4", "train.batch_size=3", "method.budget=equal_total_batch")


# ---------------------------------------------------------------- router training
@pytest.fixture
def one_thread():
    """A 100-step MLP gains nothing from intra-op threads, and on a shared 2-core box they cost ~6x."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_router_learns_the_clusters_near_the_data(tmp_path, one_thread):
    """router_ce on two separated Gaussians: near-perfect at t close to 1 (data), chance-like at t = 0."""
    from harness.pipeline.training import train_units
    from harness.clusters.router_eval import accuracy_curve
    from harness.train import load_unit_field_parts

    cfg = cfg_for(tmp_path, "method=ddm", "method.k=2", "method.router_steps=100", "train.checkpoint_every=100",
                  "train.ema_decay=0.0")
    m = method_for(cfg)
    spec = m.units()["router"]
    train_units({"router": spec}, cfg)
    model, _, _ = load_unit_field_parts(spec, cfg["paths"]["workdir"])
    held = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], [0.4, 0.4], [0.5, 0.5])
    x1, _ = held.sample(1000, torch.Generator().manual_seed(5))
    ids = assign(x1, torch.from_numpy(m.clustering.centroids))
    curve = {c["t"]: c["accuracy"] for c in accuracy_curve(NetRouter(model, 2), x1, ids, [0.0, 0.5, 0.8, 1.0])}
    assert curve[0.8] > 0.97 and curve[1.0] > 0.97
    assert curve[0.0] < 0.65                                         # pure noise says nothing about the cluster


# ---------------------------------------------------------------- bad input
def test_k_larger_than_the_data_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"method.k=5 exceeds the 4 items"):
        cfg_for(tmp_path, "method=ddm", "method.k=5", "data.n=4")


def test_an_empty_cluster_is_a_config_error():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    with pytest.raises(ConfigError, match="method.k=3: the data has fewer than 3 distinct"):
        kmeans(x, 3)


def test_router_and_expert_count_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="router routes to 2 experts but 3 were given"):
        Mixture(cluster_fields(), FunctionRouter(lambda x, t: torch.ones(len(x), 2) / 2, 2))
    wrong = NetRouter(torch.nn.Linear(2, 3).double(), 2)                   # a router trained for 3 clusters
    wrong.model = lambda x, t, y: torch.zeros(len(x), 3)
    with pytest.raises(ConfigError, match="router predicts"):
        wrong.probs(torch.zeros(4, 2), torch.zeros(4))


def test_unknown_ddpm_schedule_and_bad_expert_ids_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="method.ddpm_objective.schedule: unknown DDPM schedule 'sigmoid'"):
        cfg_for(tmp_path, "method=hetero_ddm", "method.k=2", "method.ddpm_objective.schedule=sigmoid")
    with pytest.raises(ConfigError, match=r"method.ddpm_experts=\[0, 2\] must be distinct expert ids in \[0, 2\)"):
        cfg_for(tmp_path, "method=hetero_ddm", "method.k=2", "method.ddpm_experts=[0,2]")
    with pytest.raises(ConfigError, match="method.top_k=3 must lie in"):
        cfg_for(tmp_path, "method=ddm", "method.k=2", "method.mixing=topk", "method.top_k=3")
    with pytest.raises(ConfigError, match="method.mixing: 'top3'"):
        cfg_for(tmp_path, "method=ddm", "method.k=2", "method.mixing=top3")


@pytest.mark.parametrize("name", ["ddm_mono_fmnist_mini", "ddm_fmnist_mini", "hetero_ddm_fmnist_mini"])
def test_mini_experiments_validate(tmp_path, name):
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        cfg = load([f"experiment={name}"])
    finally:
        os.environ.pop("HARNESS_WORKDIR")
    if name != "ddm_mono_fmnist_mini":
        assert cfg["method"]["budget"] == "equal_total" and cfg["method"]["k"] == 3
    assert cfg["train"]["steps"] == 300 and cfg["data"]["name"] == "unlabelled"


def full_scale_cfg(tmp_path, name, feats, *extra):
    """A full-scale DDM config with its paths: latent shards (and caption shards for the text DiT-XL/2 experts),
    DINOv2 features, and a shape-only official DiT-XL/2 checkpoint for Eq. 20."""
    from tests.dit_shapes import shape_only_official

    if "xl2" in name:
        paths = [f"data.base.root={tmp_path}", f"data.captions={tmp_path}",
                 f"backbone.init_from={shape_only_official(tmp_path / 'dit.pt')}"]
    else:
        paths = [f"data.root={tmp_path}"]
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        return load([f"experiment={name}", f"method.features_kwargs.path={feats}", *paths, *extra])
    finally:
        os.environ.pop("HARNESS_WORKDIR")


def test_table4_rows_are_what_their_configs_log(tmp_path):
    """Seed 003 Tab. 4 (issue 20 item 4): every row's match keys hold on the flattened config that runs it
    (the text-conditioned DiT-XL/2 DDM configs, CFG and steps per row), so a finished run fills its row."""
    import yaml

    from harness.tables.compare import param_text
    from harness.track.store import flatten

    feats = tmp_path / "dinov2.npy"
    np.save(feats, np.zeros((2, 4), dtype=np.float32))
    runs = {("Homogeneous (8FM)", "12.45"): ("ddm_dit_xl2_laion", []),
            ("Heterogeneous (1DDPM:7FM)", "19.75"): ("hetero_ddm_dit_xl2_laion",
                                                     ["method.ddpm_experts=[0]", "guidance.scale=6.0", "sampler.steps=75"]),
            ("Heterogeneous (2DDPM:6FM)", "15.09"): ("hetero_ddm_dit_xl2_laion", ["guidance.scale=6.0", "sampler.steps=75"]),
            ("Heterogeneous (2DDPM:6FM)", "11.88"): ("hetero_ddm_dit_xl2_laion", [])}
    tables = yaml.safe_load((Path(__file__).parents[1] / "results/paper/seed003_hetero_ddm.yaml").read_text())["tables"]
    rows = [e for t in tables if t["id"] == "hddm_t4" for e in t["entries"] if e["metric"] == "fid"]
    assert {(e["row"], e["value"]) for e in rows} == set(runs)
    for e in rows:
        name, extra = runs[e["row"], e["value"]]
        params = flatten(full_scale_cfg(tmp_path, name, feats, *extra))
        wanted = {**e["match"], **e["paper_scale"]}                      # the full-scale run counts as paper scale
        wrong = {k: (v, params.get(k)) for k, v in wanted.items() if param_text(params.get(k)) != param_text(v)}
        assert not wrong, (e["row"], e["value"], wrong)
        assert params["backbone.conditioning"] == "adaln_single" and params["backbone.text_dim"] == 768


@pytest.mark.parametrize("name", ["ddm_dit_b2_laion_art", "ddm_dit_xl2_laion", "hetero_ddm_dit_xl2_laion"])
def test_full_scale_experiments_validate_with_their_paths(tmp_path, name):
    feats = tmp_path / "dinov2.npy"
    np.save(feats, np.zeros((2, 4), dtype=np.float32))
    cfg = full_scale_cfg(tmp_path, name, feats)
    assert cfg["method"]["k"] == 8 and cfg["method"]["metric"] == "cosine"
    if name.startswith("hetero"):
        assert cfg["method"]["ddpm_experts"] == [0, 3] and cfg["method"]["ddpm_objective"]["clamp"] == 20.0


@pytest.mark.slow
def test_ddm_runs_end_to_end_and_mixing_modes_reuse_every_unit(tmp_path, one_thread):
    """prepare -> 2 experts + router trained -> Mixture sampled and scored; other mixing modes retrain nothing."""
    from harness.pipeline.experiment import run_experiment

    extra = ("method=ddm", "method.k=2", "train.steps=40", "method.router_steps=40", "train.checkpoint_every=40",
             "eval.n_samples=200", "eval.reference_n=200", "sampler.steps=8")
    first = run_experiment(cfg_for(tmp_path, *extra, "method.mixing=top1"))
    assert first["units_trained"] == 3 and math.isfinite(first["metrics"]["fd_raw_200"])
    for mode in ("topk", "full"):
        again = run_experiment(cfg_for(tmp_path, *extra, f"method.mixing={mode}"))
        assert again["units_trained"] == 0 and again["units_reused"] == 3
    curve = (tmp_path / "clusters").glob("*/router_*/curve.json")
    assert len(list(curve)) == 1


def test_pairwise_diversity_is_zero_for_copies_and_grows_with_spread():
    from harness.evaluate.diversity import pairwise_diversity

    g = np.random.default_rng(0)
    same = np.repeat(g.normal(size=(1, 16)), 50, axis=0)
    assert pairwise_diversity(same)["mean"] == pytest.approx(0.0, abs=1e-12)
    centre = g.normal(size=(1, 16)) * 5
    tight = centre + 0.1 * g.normal(size=(50, 16))
    wide = centre + 3.0 * g.normal(size=(50, 16))
    assert pairwise_diversity(tight)["mean"] < pairwise_diversity(wide)["mean"]
    orth = np.eye(8)                                                   # orthonormal features: distance exactly 1
    assert pairwise_diversity(orth)["mean"] == pytest.approx(1.0) and pairwise_diversity(orth)["pairs"] == 28


def test_a_ddpm_checkpoint_with_an_unknown_schedule_cannot_be_converted(tmp_path):
    from harness.methods.hetero_ddm import converted_unit_field
    from harness.train.units import UnitSpec

    spec = UnitSpec(label="ddpm", data={"name": "gaussian_mixture"}, backbone={"name": "mlp"},
                    objective={"name": "ddpm", "schedule": "sigmoid"}, train={"steps": 1})
    with pytest.raises(ConfigError, match="objective.schedule: unknown DDPM schedule 'sigmoid'"):
        converted_unit_field(spec, tmp_path, conversion="seed003")
    flow = UnitSpec(label="fm", data={"name": "gaussian_mixture"}, backbone={"name": "mlp"},
                    objective={"name": "flow_matching"}, train={"steps": 1})
    with pytest.raises(ConfigError, match="objective.name must be ddpm"):
        converted_unit_field(flow, tmp_path)


# ---------------------------------------------------------------- DDPM/FM threshold switch (seed 003 Sec. 3.3)
class ZeroVelocity(torch.nn.Module):
    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


def switch_cfg(tmp_path, *extra):
    return load_in(tmp_path, *GMM[:-1], *extra)                       # GMM without the router's key


def switch_method(tmp_path, *extra):
    return method_for(switch_cfg(tmp_path, "method=objective_switch", "method.ddpm_objective.conversion=snr_aligned",
                              "method.ddpm_objective.clamp=null", *extra))


@pytest.mark.parametrize("low_noise", ["ddpm", "fm"])
def test_switch_hands_over_at_the_native_threshold(tmp_path, float64, low_noise):
    """tau = 0.3 in seed time (1 = noise): the low-noise expert answers exactly for harness t >= 0.7."""
    from harness.objectives import build_objective

    m = switch_method(tmp_path, "method.threshold=0.3", f"method.low_noise={low_noise}")
    field = m.assemble({"ddpm": (ExactEps(), None), "fm": (ZeroVelocity(), build_objective({"name": "flow_matching"}))})
    g = torch.Generator().manual_seed(2)
    x, t = 1.5 * torch.randn(400, 3, generator=g), 0.02 + 0.96 * torch.rand(400, generator=g)
    v, exact = field(x, t), linear_velocity(x, t, MU, S)
    ddpm_side = t >= 0.7 if low_noise == "ddpm" else t < 0.7
    assert ddpm_side.sum() > 50 and (~ddpm_side).sum() > 50
    assert torch.allclose(v[ddpm_side], exact[ddpm_side], atol=1e-9)   # converted exact eps = exact velocity
    assert bool((v[~ddpm_side] == 0).all())                            # the FM stand-in answers the rest
    assert field.calls.tolist() == [int(ddpm_side.sum()), int((~ddpm_side).sum())]


def test_trajectory_threshold_is_the_mirrored_native_point(tmp_path, float64):
    """Sec. 7.3's tau (fraction of the trajectory before the switch) = native 1 - tau: Fig. 13's tau = 0.3 hands
    over where Fig. 4's tau = 0.7 does, and a lower trajectory tau gives the second expert more of the path."""
    from harness.objectives import build_objective

    parts = {"ddpm": (ExactEps(), None), "fm": (ZeroVelocity(), build_objective({"name": "flow_matching"}))}
    g = torch.Generator().manual_seed(3)
    x, t = 1.5 * torch.randn(400, 3, generator=g), 0.02 + 0.96 * torch.rand(400, generator=g)
    answers = {}
    for conv, tau in (("trajectory", 0.3), ("native", 0.7), ("trajectory", 0.6)):
        m = switch_method(tmp_path, f"method.threshold={tau}", f"method.threshold_convention={conv}")
        field = m.assemble(parts)
        answers[conv, tau] = (field(x, t), field.calls.tolist())
        assert m.describe()["native_threshold"] == pytest.approx(1 - tau if conv == "trajectory" else tau)
    assert torch.equal(answers["trajectory", 0.3][0], answers["native", 0.7][0])
    second_expert = {tau: answers["trajectory", tau][1][0] for tau in (0.3, 0.6)}    # DDPM = low noise = second
    assert second_expert[0.3] > second_expert[0.6] > 0
    with pytest.raises(ConfigError, match="method.threshold_convention must be native or trajectory"):
        switch_method(tmp_path, "method.threshold_convention=seed")


def test_switch_rows_share_units_and_sampling_keys_retrain_nothing(tmp_path):
    mono = method_for(switch_cfg(tmp_path, "method=monolithic")).units()["model"].hash
    fm_only = switch_method(tmp_path, "method.use=fm").units()
    assert list(fm_only) == ["fm"] and fm_only["fm"].hash == mono           # "FM" row = the monolithic unit
    combined = switch_method(tmp_path).units()
    assert set(combined) == {"ddpm", "fm"} and combined["fm"].hash == mono
    assert "conversion" not in combined["ddpm"].objective and combined["ddpm"].objective["schedule"] == "cosine"
    moved = switch_method(tmp_path, "method.threshold=0.8", "method.low_noise=fm",
                          "method.ddpm_objective.conversion=seed003").units()
    assert {k: u.hash for k, u in moved.items()} == {k: u.hash for k, u in combined.items()}
    same_schedule = switch_method(tmp_path, "method.ddpm_objective.schedule=linear_path").units()
    assert same_schedule["ddpm"].hash != combined["ddpm"].hash and same_schedule["fm"].hash == mono


def test_switch_bad_input_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="method.use must be one of"):
        switch_method(tmp_path, "method.use=both")
    with pytest.raises(ConfigError, match=r"method.threshold must lie in \[0, 1\]"):
        switch_method(tmp_path, "method.threshold=1.5")
    with pytest.raises(ConfigError, match="method.low_noise must be ddpm or fm"):
        switch_method(tmp_path, "method.low_noise=eps")
    with pytest.raises(ConfigError, match="method.ddpm_objective"):
        switch_method(tmp_path, "method.ddpm_objective.schedule=sigmoid")
    with pytest.raises(ConfigError, match="which is ddpm too"):
        switch_method(tmp_path, "objective=ddpm_cosine")


def test_switch_experiments_validate(tmp_path):
    mini = load_in(tmp_path, "experiment=switch_fmnist_mini")
    assert mini["method"]["name"] == "objective_switch" and "div" in mini["eval"]["metrics"]
    alex = tmp_path / "alexnet-owt-7be5be79.pth"
    alex.write_bytes(b"placeholder: validation only checks that the file exists")
    from tests.dit_shapes import shape_only_official

    paths = [f"data.base.root={tmp_path}", f"data.captions={tmp_path}",
             f"backbone.init_from={shape_only_official(tmp_path / 'dit.pt')}"]
    full = load_in(tmp_path, "experiment=switch_dit_xl2_laion", *paths, f"eval.lpips_backbone={alex}")
    assert full["sampler"]["steps"] == 75 and full["eval"]["n_samples"] == 5000 and "lpips" in full["eval"]["metrics"]
    assert full["guidance"]["scale"] == 6.0 and full["backbone"]["conditioning"] == "adaln_single"
    with pytest.raises(ConfigError, match="lpips_backbone"):
        load_in(tmp_path, "experiment=switch_dit_xl2_laion", *paths)


@pytest.mark.slow
def test_switch_runs_end_to_end_and_a_threshold_change_only_resamples(tmp_path, one_thread):
    from harness.pipeline.experiment import run_experiment

    extra = ("method=objective_switch", "train.steps=30", "train.checkpoint_every=30", "eval.n_samples=200",
             "eval.reference_n=200", "sampler.steps=8")
    first = run_experiment(switch_cfg(tmp_path, *extra))
    assert first["units_trained"] == 2 and math.isfinite(first["metrics"]["fd_raw_200"])
    again = run_experiment(switch_cfg(tmp_path, *extra, "method.threshold=0.2", "method.low_noise=fm"))
    assert again["units_trained"] == 0 and again["units_reused"] == 2
    # Tab. 3's "Native DDPM" row: the same DDPM unit under the ancestral sampler, nothing retrained
    native = run_experiment(switch_cfg(tmp_path, *extra, "method.use=ddpm", "sampler=ddpm", "sampler.steps=8"))
    assert native["units_trained"] == 0 and math.isfinite(native["metrics"]["fd_raw_200"])
    with pytest.raises(ConfigError, match="sampler=ddpm needs an eps-prediction network"):
        switch_cfg(tmp_path, *extra, "sampler=ddpm")                      # the combined field answers velocity


def test_eq31_damps_only_cosine_schedule_experts(float64):
    """Seed 003 Eq. 31 is "for cosine schedules": a linear-schedule DDPM expert converts undamped."""
    from harness.objectives.ddpm import DDPMEpsilon

    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(64, 3, generator=g, dtype=torch.float64), 0.2 + 0.7 * torch.rand(64, generator=g, dtype=torch.float64)
    net = lambda xt, tau, y: 0.3 * xt + tau[:, None]                                      # any eps-network
    for schedule, damped in (("cosine", True), ("linear", False)):
        velocity = {d: DDPMEpsilon(schedule, conversion="seed003", damping=d, alpha_min=0.0).velocity(net, x, t, None)
                    for d in ("eq31", "none")}
        factor = damping_eq31(1 - t)[:, None] if damped else torch.ones_like(t)[:, None]
        assert torch.allclose(velocity["eq31"], factor * velocity["none"], atol=1e-12), schedule


def test_describe_counts_the_router_with_its_cluster_classes(tmp_path):
    """harness describe before clustering: the router's class count is method.k (its data node says so)."""
    from harness.backbones.build import build_backbone
    from harness.pipeline.describe import describe_experiment

    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        cfg = load(["experiment=ddm_fmnist_mini", "method.k=5"])
    finally:
        os.environ.pop("HARNESS_WORKDIR")
    rows = describe_experiment(cfg)["units"]
    from harness.baselines.ddm import DEFAULT_ROUTER

    router = build_backbone(cfg["method"]["router_backbone"] or DEFAULT_ROUTER, (1, 28, 28), 5)   # null: the default
    assert rows["router"]["params"] == sum(p.numel() for p in router.parameters())
    assert sorted(rows) == ["expert0", "expert1", "expert2", "expert3", "expert4", "router"]


def test_text_experts_keep_their_items_captions_and_the_router_reads_none(tmp_path):
    """Text-conditioned DDM (seed 003's experts read CLIP captions): an expert's rows come with their own items'
    caption embeddings; the router's rows carry the cluster ids and no captions (it reads x_t and t only)."""
    from harness.clusters.partition import cluster_dataset
    from harness.data.base import build_dataset

    node = {"name": "fashion_mnist_captioned", "limit": 300}
    base = build_dataset(node)
    c = cluster_dataset(base, node, k=2, store=tmp_path)
    common = {"name": "cluster_subset", "base": node, "clustering": c.hash, "store": str(tmp_path)}
    expert = build_dataset({**common, "cluster": 1, "labels": "none"})
    rows = (torch.from_numpy(c.ids) == 1).nonzero()[:, 0]
    x, caps = expert.get_batch(torch.arange(len(expert)))
    assert len(expert) == len(rows) > 0 and torch.equal(x, base.get_batch(rows)[0])
    assert torch.equal(caps, base.captions(rows))
    router = build_dataset({**common, "cluster": None, "labels": "cluster", "k": 2})
    _, y = router.get_batch(torch.arange(20))
    assert y.dtype == torch.long and torch.equal(y, torch.from_numpy(c.ids[:20])) and router.num_classes == 2
    assert not hasattr(router, "caption_meta")
    with pytest.raises(Exception, match="has 2 clusters but the data node says k=3"):
        build_dataset({**common, "cluster": None, "labels": "cluster", "k": 3})


def test_guidance_classes_never_count_the_routers_clusters():
    """A class-conditional DDM (3 classes) with a k = 8 router: CFG's null class is 3, not a cluster id."""
    from harness.objectives.base import build_objective

    net = torch.nn.Identity()
    parts = {"router": (net, build_objective({"name": "router_ce"})),
             "expert0": (net, build_objective({"name": "flow_matching"})),
             "expert1": (net, build_objective({"name": "flow_matching"}))}
    assert field_classes(parts, {"router": 8, "expert0": 3, "expert1": 3}) == 3
    assert field_classes({"router": parts["router"]}, {"router": 8}) == 0


def test_table3_and_figure4_rows_are_what_the_switch_config_logs(tmp_path):
    """Seed 003 Tab. 3 / Fig. 4 (DDPM <-> FM conversion on text-conditioned DiT-XL/2, CFG 6, 75 steps): each row's
    match and paper-scale keys hold on switch_dit_xl2_laion with that row's overrides (the table note's recipe),
    so a finished full-scale run fills its row and no other."""
    import yaml

    from harness.config import load
    from harness.tables.compare import param_text
    from harness.track.store import flatten
    from tests.dit_shapes import shape_only_official

    ckpt = shape_only_official(tmp_path / "dit.pt")
    paths = [f"data.base.root={tmp_path}", f"data.captions={tmp_path}", f"backbone.init_from={ckpt}",
             f"eval.lpips_backbone={ckpt}"]
    same = ["objective=flow_matching_cosine", "objective.conversion=native"]
    rows = {("hddm_t3", "Native DDPM"): ["method.use=ddpm", "sampler=ddpm", "sampler.steps=75"],
            ("hddm_t3", "FM"): ["method.use=fm"],
            ("hddm_t3", "DDPM \\rightarrow FM"): ["method.use=ddpm"],
            ("hddm_t3", "Combined (same schedule)"): same,
            ("hddm_t3", "Combined (diff. schedules)"): [],
            ("hddm_f4", "threshold 0.2"): [*same, "method.threshold=0.2", "eval.n_samples=1000"]}
    tables = yaml.safe_load((Path(__file__).parents[1] / "results/paper/seed003_hetero_ddm.yaml").read_text())["tables"]
    entries = [(t["id"], e) for t in tables if t["id"] in ("hddm_t3", "hddm_f4") for e in t["entries"] if e.get("match")]
    assert {(tid, e["row"]) for tid, e in entries} == set(rows)
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        flat = {key: flatten(load(["experiment=switch_dit_xl2_laion", *paths, *extra])) for key, extra in rows.items()}
    finally:
        os.environ.pop("HARNESS_WORKDIR")
    for tid, e in entries:
        for key, params in flat.items():
            holds = all(param_text(params.get(k)) == param_text(v) for k, v in {**e["match"], **e["paper_scale"]}.items())
            if key == (tid, e["row"]):
                assert holds, (tid, e["row"], e["metric"], "its own config does not fill it")
            elif key[0] == tid:
                assert not holds, (tid, e["row"], e["metric"], f"the config of row {key[1]!r} fills it too")
    assert flat[("hddm_t3", "FM")]["backbone.conditioning"] == "adaln_single"


def test_full_scale_text_ddm_is_flop_counted_per_activated_expert(tmp_path):
    """Issue 20 item 4 (FLOP-counted): on the meta device, Top-1 / Top-2 / Full of the 8 text DiT-XL/2 experts cost
    the router plus 1 / 2 / 8 guided experts per NFE (the experts are equal), and per image it is 50 NFE.  The
    router (Sec. 6.3's DiT-B/2, ~23 GMACs = ~46 torch GFLOPs a forward) runs once per NFE: CFG's two branches
    route alike (it reads x_t and t only), so the second reuses the first's weights."""
    from harness.pipeline.cost import config_cost

    feats = tmp_path / "dinov2.npy"
    np.save(feats, np.zeros((2, 4), dtype=np.float32))
    cost = {m: config_cost(full_scale_cfg(tmp_path, "ddm_dit_xl2_laion", feats, *extra))
            for m, extra in (("top1", ["method.mixing=top1"]), ("top2", ["method.mixing=topk", "method.top_k=2"]),
                             ("full", ["method.mixing=full"]))}
    nfe = {m: c["gflops_per_nfe_torch"] for m, c in cost.items()}
    expert = nfe["top2"] - nfe["top1"]                                   # one expert, cond + null caption branch
    router = nfe["top1"] - expert
    assert 500 < expert < 700 and 40 < router < 53                      # DiT-XL/2 text: ~289 GFLOPs per forward
    assert nfe["full"] == pytest.approx(router + 8 * expert, rel=1e-6)
    for c in cost.values():
        assert c["gflops_per_image_torch"] == pytest.approx(50 * c["gflops_per_nfe_torch"], rel=1e-9)


def test_dit_router_is_seed_003s_dit_b2_router_and_learns_clusters_from_x_t_alone():
    """Sec. 6.3: a DiT-B/2 (12 blocks, 768 wide, 12 heads; the seed's 129M) on x_t and t only.  At that size it
    counts 129.5M parameters; its logits ignore y and start uniform (zero head); a tiny one trained with the real
    router_ce objective separates two clusters (bright vs dark images) at low noise."""
    from harness.backbones.build import build_backbone
    from harness.objectives.base import build_objective

    with torch.device("meta"):
        b2 = build_backbone({"name": "dit_router", "patch_size": 2, "hidden_size": 768, "depth": 12, "num_heads": 12},
                            (4, 32, 32), 8)
    assert sum(p.numel() for p in b2.parameters()) / 1e6 == pytest.approx(129.5, abs=0.1)
    torch.manual_seed(0)
    net = build_backbone({"name": "dit_router", "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2},
                         (1, 8, 8), 2)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(x, t), torch.zeros(4, 2)) and torch.equal(net(x, t, torch.tensor([0, 1, 0, 1])), net(x, t))
    ce = build_objective({"name": "router_ce"})
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        y = torch.randint(0, 2, (64,), generator=g)
        x1 = (2.0 * y - 1.0)[:, None, None, None] + 0.3 * torch.randn(64, 1, 8, 8, generator=g)
        loss = ce.loss(net, x1, torch.randn(64, 1, 8, 8, generator=g), 0.5 + 0.5 * torch.rand(64, generator=g), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.arange(200) % 2
    x1 = (2.0 * y - 1.0)[:, None, None, None] + 0.3 * torch.randn(200, 1, 8, 8, generator=g)
    t = torch.full((200,), 0.9)
    with torch.no_grad():
        acc = (net(0.9 * x1 + 0.1 * torch.randn(200, 1, 8, 8, generator=g), t).argmax(1) == y).float().mean()
    assert acc > 0.95, float(acc)
