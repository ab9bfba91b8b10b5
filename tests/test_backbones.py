"""Backbones: shapes, null class, paper sizes counted on the meta device, token routing, FFN plug-ins."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from harness.backbones.dit import DiT
from harness.backbones.ffn import DenseFFN, SwiGLUFFN
from harness.backbones.flops import count_parameters, flop_count, gmacs_per_forward
from harness.backbones.size import describe
from harness.backbones.token_selection import RandomRoute, num_routed
from harness.config import compose, options
from harness.core.errors import ConfigError
from harness.core.registry import get, registry
from harness.backbones.build import build_backbone

# Small settings per registered backbone: (in_shape, kwargs).  A new backbone adds a line here.
SMALL = {
    "mlp": [((2,), dict(width=32, depth=2)), ((5,), dict(width=16, depth=1))],
    "unet": [((3, 32, 32), dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                                attn_head_channels=16, norm_groups=8)),
             ((1, 28, 28), dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, stem_unshuffle=2)),
             ((1, 8, 8), dict(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,)))],
    "dit": [((3, 32, 32), dict(patch_size=4, hidden_size=32, depth=2, num_heads=4)),
            ((4, 8, 8), dict(patch_size=2, hidden_size=32, depth=3, num_heads=2, ffn="swiglu", ffn_every=2))],
    "sit": [((4, 8, 8), dict(patch_size=2, hidden_size=32, depth=2, num_heads=4))],
    "jit": [((3, 32, 32), dict(patch_size=8, hidden_size=32, depth=2, num_heads=4, bottleneck_dim=8))],
    "time_experts": [((2,), dict(expert={"name": "mlp", "width": 16, "depth": 1}, boundaries=[0.3, 0.7])),
                     ((1, 8, 8), dict(expert={"name": "unet", "channels": 8, "channel_mult": [1, 2],
                                              "num_res_blocks": 1}, boundaries=[0.5]))],
}
NOT_VELOCITY = {"router": "outputs K cluster logits, not a velocity (tests/test_ddm.py covers it)",
                "dit_router": "outputs K cluster logits, not a velocity (tests/test_ddm.py covers it)"}


def backbone_node(option: str) -> dict:
    """The ``backbone`` node of ``conf/backbone/<option>.yaml`` as the harness composes it."""
    return OmegaConf.to_container(compose([f"backbone={option}"]).backbone)


@pytest.mark.parametrize("name", registry("backbone").keys())
@pytest.mark.parametrize("num_classes", [0, 10])
def test_forward_keeps_shape(name: str, num_classes: int) -> None:
    if name in NOT_VELOCITY:
        pytest.skip(f"backbone {name!r} {NOT_VELOCITY[name]}")
    assert name in SMALL, f"add a small setting for the new backbone {name!r} to SMALL"
    for in_shape, kwargs in SMALL[name]:
        torch.manual_seed(0)
        model = get("backbone", name)(in_shape=in_shape, num_classes=num_classes, **kwargs)
        x, t = torch.randn(3, *in_shape), torch.rand(3)
        y = torch.tensor([0, 4, 9]) if num_classes else None
        assert model(x, t, y).shape == x.shape
        assert model(x, t, None).shape == x.shape
        assert torch.isfinite(model(x, t, y)).all()


@pytest.mark.parametrize("name", ["mlp", "unet", "dit", "jit"])
def test_null_class_is_row_num_classes(name: str) -> None:
    in_shape, kwargs = SMALL[name][0]
    model = get("backbone", name)(in_shape=in_shape, num_classes=10, **kwargs).eval()  # no dropout
    assert model.label_embed.table.num_embeddings == 11
    for p in model.parameters():  # move zero-initialised layers off zero, so the label matters
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, *in_shape), torch.rand(2)
    null = model(x, t, torch.full((2,), 10))
    assert torch.equal(model(x, t, None), null)
    assert not torch.allclose(model(x, t, torch.tensor([1, 2])), null)
    assert getattr(get("backbone", name)(in_shape=in_shape, num_classes=0, **kwargs), "label_embed") is None


def test_every_backbone_config_composes_and_validates() -> None:
    names = options("backbone")
    for required in ["mlp_tiny", "unet_tiny", "unet_fmnist_mini", "unet_cifar10", "dit_tiny", "jit_b16", "jit_mini",
                     *[f"{k}_{s}" for k in ("sit", "dit") for s in ("s2", "b2", "l2", "xl2")]]:
        assert required in names
    for option in names:
        node = backbone_node(option)
        assert node["name"] in registry("backbone").keys()
    assert backbone_node("sit_b2") == dict(backbone_node("dit_b2"), name="sit")


@pytest.mark.parametrize("option,in_shape", [("mlp_tiny", (2,)), ("unet_tiny", (3, 32, 32)),
                                             ("unet_fmnist_mini", (1, 28, 28)), ("dit_tiny", (3, 32, 32)),
                                             ("jit_mini", (1, 28, 28))])
def test_cpu_configs_build_and_run(option: str, in_shape: tuple[int, ...]) -> None:
    model = build_backbone(backbone_node(option), in_shape, 10)
    x = torch.randn(2, *in_shape)
    assert model(x, torch.rand(2), torch.tensor([3, 10])).shape == x.shape
    if option == "unet_tiny":
        assert 0.2e6 < count_parameters(model) < 0.4e6
    if option == "unet_fmnist_mini":
        assert 0.3e6 < count_parameters(model) < 0.5e6


def meta_build(option: str, in_shape: tuple[int, ...], num_classes: int = 1000):
    return lambda: build_backbone(backbone_node(option), in_shape, num_classes)


def test_sit_xl2_params_and_gflops_match_paper_on_meta() -> None:
    """SiT-XL/2 = DiT-XL/2: 675M parameters, 118.6 Gflops (multiply-adds), DiT Tab. 4."""
    factory = meta_build("sit_xl2", (4, 32, 32))
    with torch.device("meta"):
        model = factory()
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    info = describe(model, (4, 32, 32))
    assert abs(info["params"] / 675e6 - 1) < 0.01
    assert abs(info["gmacs"] / 118.6 - 1) < 0.02
    assert info["gflops_fmac"] == pytest.approx(2 * info["gmacs"])
    assert gmacs_per_forward(factory, (4, 32, 32)) == pytest.approx(info["gmacs"])


def test_dit_b2_and_unet_cifar10_sizes() -> None:
    b2 = describe(meta_build("dit_b2", (4, 32, 32)), (4, 32, 32))
    assert abs(b2["gmacs"] / 23.01 - 1) < 0.01 and abs(b2["params"] / 130e6 - 1) < 0.01  # DiT Tab. 4: B/2
    unet = describe(meta_build("unet_cifar10", (3, 32, 32), 0), (3, 32, 32))
    assert abs(unet["params"] / 35.7e6 - 1) < 0.01  # torchcfm's CIFAR-10 UNet: 35.7M
    jit = describe(meta_build("jit_b16", (3, 256, 256)), (3, 256, 256))
    assert abs(jit["params"] / 131e6 - 1) < 0.01  # seed 000 Tab. 2: 131M activated parameters


def test_meta_count_equals_real_count() -> None:
    in_shape, kwargs = SMALL["dit"][0]
    model = DiT(in_shape=in_shape, num_classes=10, **kwargs)
    real = flop_count(lambda: DiT(in_shape=in_shape, num_classes=10, **kwargs), in_shape, batch=3)
    assert flop_count(model, in_shape, batch=3) == real > 0
    assert not any(p.is_meta for p in model.parameters())


def routed_dit(gamma: float, **kw) -> DiT:
    torch.manual_seed(0)
    return DiT(in_shape=(4, 16, 16), num_classes=10, patch_size=2, hidden_size=32, depth=6, num_heads=4,
               token_selector="random_route", token_selector_kwargs={"gamma": gamma}, **kw)


def test_random_route_gamma_zero_is_exactly_dense() -> None:
    torch.manual_seed(0)
    dense = DiT(in_shape=(4, 16, 16), num_classes=10, patch_size=2, hidden_size=32, depth=6, num_heads=4)
    routed = routed_dit(0.0)
    routed.load_state_dict(dense.state_dict())
    for p in dense.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    routed.load_state_dict(dense.state_dict())
    x, t, y = torch.randn(4, 4, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 10])
    for mode in (True, False):
        dense.train(mode), routed.train(mode)
        assert torch.equal(routed(x, t, y), dense(x, t, y))
    sparse = routed_dit(0.5)
    sparse.load_state_dict(dense.state_dict())
    sparse.train()
    assert torch.equal(sparse(x, t, y, gamma=0.0), dense(x, t, y))  # per-call override (Sparse Guidance)
    assert not torch.allclose(sparse(x, t, y), dense(x, t, y))


def test_random_route_reinserts_routed_tokens_unchanged() -> None:
    selector = RandomRoute(gamma=0.25).train()
    x = torch.randn(3, 16, 8)
    kept, state = selector.select(x, torch.Generator().manual_seed(1))
    assert kept.shape == (3, 12, 8)
    assert torch.equal(selector.restore(kept, x, state), x)
    changed = (selector.restore(kept + 1, x, state) != x).any(-1)  # (B, S)
    assert changed.sum(1).tolist() == [12, 12, 12]
    again, _ = selector.select(x, torch.Generator().manual_seed(1))
    assert torch.equal(again, kept)  # the generator fixes the subset
    assert RandomRoute(gamma=0.5).eval().kept_tokens(16) == 16  # TREAD samples dense by default


def block_macs(tokens: int, dim: int, ratio: float = 4.0) -> int:
    """Hand count of one DiT block per sample: qkv + proj + FFN per token, QK^T and AV, adaLN."""
    return tokens * (3 + 1 + 2 * int(ratio)) * dim * dim + 2 * tokens * tokens * dim + 6 * dim * dim


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
def test_routed_flops_follow_the_hand_count(gamma: float) -> None:
    model = routed_dit(gamma).train()
    dense = flop_count(model, (4, 16, 16), batch=2, gamma=0.0)
    routed = flop_count(model, (4, 16, 16), batch=2)
    S, D = 64, 32
    start, end = model.select_blocks
    assert (start, end) == (2, 4)  # TREAD default: second to second-to-last block
    kept = S - num_routed(S, gamma)
    saved = 2 * 2 * (end - start) * (block_macs(S, D) - block_macs(kept, D))  # FLOPs = 2 MACs, batch 2
    assert dense - routed == saved
    # the token-linear part of the saving is exactly proportional to gamma
    linear = 2 * 2 * (end - start) * (S - kept) * 12 * D * D
    assert linear == pytest.approx(gamma * 2 * 2 * (end - start) * S * 12 * D * D)


def test_dense_ffn_via_registry_and_ffn_placement() -> None:
    ffn = get("ffn", "dense")(dim=16, hidden_ratio=2.0)
    out, aux = ffn(torch.randn(2, 5, 16), {})
    assert isinstance(ffn, DenseFFN) and out.shape == (2, 5, 16) and aux == {} and ffn.fc1.out_features == 32
    model = DiT(in_shape=(4, 8, 8), num_classes=0, patch_size=2, hidden_size=32, depth=4, num_heads=4,
                ffn="swiglu", ffn_every=2)
    assert [type(b.ffn).__name__ for b in model.blocks] == ["DenseFFN", "SwiGLUFFN", "DenseFFN", "SwiGLUFFN"]
    assert model.ffn_layers == [1, 3]  # DiffMoE: every other block, 1-based even
    explicit = DiT(in_shape=(4, 8, 8), num_classes=0, patch_size=2, hidden_size=32, depth=4, num_heads=4,
                   ffn="swiglu", ffn_layers=(0,))
    assert isinstance(explicit.blocks[0].ffn, SwiGLUFFN) and isinstance(explicit.blocks[1].ffn, DenseFFN)
    model(torch.randn(2, 4, 8, 8), torch.rand(2))
    assert model.last_aux_loss.shape == () and float(model.last_aux_loss) == 0.0


@pytest.mark.parametrize("kwargs,key", [
    (dict(hidden_size=100, num_heads=3), "backbone.hidden_size"),
    (dict(patch_size=3), "backbone.patch_size"),
    (dict(ffn="moe_typo"), "backbone.ffn"),
    (dict(token_selector="random_route", token_selector_kwargs={"gamma": 1.0}), "backbone.token_selector_kwargs.gamma"),
    (dict(token_selector="identity", select_blocks=(3, 2)), "backbone.select_blocks"),
    (dict(ffn_kwargs={"nope": 1}), "backbone.ffn_kwargs"),
])
def test_impossible_dit_settings_are_config_errors(kwargs: dict, key: str) -> None:
    base = dict(in_shape=(4, 8, 8), num_classes=0, patch_size=2, hidden_size=32, depth=4, num_heads=4)
    with pytest.raises(ConfigError) as err:
        DiT(**{**base, **kwargs})
    assert err.value.one_line().startswith(key) and "\n" not in err.value.one_line()


def test_impossible_unet_and_mlp_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="backbone.stem_unshuffle"):
        get("backbone", "unet")(in_shape=(1, 28, 28), num_classes=0, stem_unshuffle=3)
    with pytest.raises(ConfigError, match="backbone.channel_mult"):
        get("backbone", "unet")(in_shape=(1, 28, 28), num_classes=0, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="backbone.name"):
        get("backbone", "mlp")(in_shape=(1, 8, 8), num_classes=0)


@pytest.mark.parametrize("option,in_shape", [("unet_tiny", (3, 32, 32)), ("dit_tiny", (3, 32, 32)),
                                             ("unet_fmnist_mini", (1, 28, 28)), ("mlp_tiny", (2,)),
                                             ("jit_mini", (3, 32, 32))])
def test_gradient_reaches_every_parameter(option: str, in_shape: tuple[int, ...]) -> None:
    """No unused parameters (DDP needs none); zero-initialised layers are perturbed first so
    adaLN-Zero gates and zero output convs do not block the gradient by construction."""
    torch.manual_seed(0)
    model = build_backbone(backbone_node(option), in_shape, 10)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(4, *in_shape)
    model(x, torch.rand(4), torch.tensor([0, 1, 2, 10])).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
