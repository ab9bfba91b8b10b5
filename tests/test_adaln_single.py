"""AdaLN-Single (seed 003 Sec. 2.5, Eq. 14-17) and the default adaLN-Zero left as it was."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from harness.backbones.build import build_backbone
from harness.backbones.dit import DiT
from harness.backbones.flops import count_parameters
from harness.backbones.size import describe
from harness.core.errors import ConfigError

SHAPE = (4, 8, 8)
KW = dict(patch_size=2, hidden_size=32, depth=3, num_heads=4)


def make(conditioning: str | None = None, seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    extra = {} if conditioning is None else {"conditioning": conditioning}
    return DiT(in_shape=SHAPE, num_classes=10, **{**KW, **kw}, **extra)


def test_param_drop_follows_the_formula():
    """adaLN-Zero -> AdaLN-Single removes depth (D 6D + 6D) block MLPs and the final layer's D 2D + 2D MLP,
    and adds one global Linear(D, 6D), depth tables E_b (6, D) and the final table (2, D)."""
    for D, depth in [(32, 3), (64, 5)]:
        zero, single = make(hidden_size=D, depth=depth), make("adaln_single", hidden_size=D, depth=depth)
        removed = depth * (D * 6 * D + 6 * D) + (D * 2 * D + 2 * D)
        added = (D * 6 * D + 6 * D) + depth * 6 * D + 2 * D
        assert count_parameters(zero) - count_parameters(single) == removed - added
        # harness describe's counter sees the same, from shapes alone on the meta device
        node = {"name": "dit", **KW, "hidden_size": D, "depth": depth}
        d0 = describe(lambda: build_backbone(node, SHAPE, 10), SHAPE)
        d1 = describe(lambda: build_backbone({**node, "conditioning": "adaln_single"}, SHAPE, 10), SHAPE)
        assert d0["params"] - d1["params"] == removed - added


def test_adaln_zero_default_is_unchanged():
    """The default builds exactly DiT: same state_dict keys as an explicit adaln_zero, none of the new modules,
    the same weights from the same seed, and DiT's block computed by hand from those weights."""
    default, explicit = make(), make("adaln_zero")
    assert list(default.state_dict()) == list(explicit.state_dict())
    keys = list(default.state_dict())
    assert not any(k.startswith(("t_block", "y_embedder")) or "scale_shift_table" in k or "cross_attn" in k
                   for k in keys)
    assert all(f"blocks.{i}.adaLN_modulation.1.weight" in keys for i in range(KW["depth"]))
    assert "final_layer.adaLN_modulation.1.weight" in keys
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    # DiT Fig. 3 by hand on randomised weights (the init zeros would hide a wrong order)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in default.parameters():
            p.normal_(0, 0.1)
    block = default.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    mod = block.adaLN_modulation[1](F.silu(c))[:, None]
    sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
    ln = lambda h: F.layer_norm(h, (32,), eps=1e-6)
    h = x + g1 * block.attn(ln(x) * (1 + sc1) + sh1)
    want = h + g2 * block.ffn(ln(h) * (1 + sc2) + sh2, {})[0]
    assert torch.allclose(block(x, c, {})[0], want, atol=1e-6)


def test_init_follows_the_seed():
    """Seed 003: the modulation path's final projection is zero, so at init every block's six vectors are its
    E_b alone (whatever t and y), E_b ~ N(0, 1/sqrt(D)) per entry; the output layer is zero (DiT)."""
    D = 64
    m = make("adaln_single", hidden_size=D, depth=4)
    x, y = torch.randn(3, *SHAPE), torch.tensor([0, 4, 9])
    c = m.condition(torch.tensor([0.1, 0.5, 0.9]), y, 3)
    mods = m.block_condition(c)
    assert torch.count_nonzero(mods) == 0                                  # C = 0 for every t, y
    for block in m.blocks:
        got = torch.cat(block.modulation(mods), dim=1)                    # (B, 6, D)
        assert torch.equal(got, block.scale_shift_table[None].expand(3, -1, -1))
    tables = torch.cat([b.scale_shift_table.flatten() for b in m.blocks])
    assert abs(tables.std().item() - D ** -0.5) < 0.25 * D ** -0.5       # 1536 draws: std within 25 %
    assert torch.count_nonzero(m(x, torch.rand(3), y)) == 0              # zero final linear


def test_block_is_identity_when_its_gates_are_zero():
    """With E_b's gate rows (alpha_msa, alpha_mlp: rows 2 and 5) zero, Eq. 17 and 19 add nothing: identity at init."""
    m = make("adaln_single")
    block = m.blocks[1]
    with torch.no_grad():
        block.scale_shift_table[[2, 5]] = 0
    x = torch.randn(2, 16, 32)
    c = m.block_condition(m.condition(torch.rand(2), torch.tensor([1, 2]), 2))
    assert torch.equal(block(x, c, {})[0], x)
    # ...and not identity with the seed's E_b gates, which differ from zero
    assert not torch.allclose(m.blocks[0](x, c, {})[0], x)


def test_block_matches_eq_16_17_19_by_hand():
    """Randomised weights: the block's output is Eq. 16-19 computed from C_b + E_b."""
    m = make("adaln_single", seed=3)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    tau = m.condition(torch.rand(2), torch.tensor([3, 7]), 2)
    C = m.t_block.t_block[1](F.silu(tau)).view(2, 6, 32)                 # Eq. 14-15 (shared over blocks)
    block, x = m.blocks[2], torch.randn(2, 16, 32)
    sh1, sc1, g1, sh2, sc2, g2 = (C + block.scale_shift_table[None]).chunk(6, dim=1)   # Eq. 16
    ln = lambda h: F.layer_norm(h, (32,), eps=1e-6)
    h = x + g1 * block.attn(ln(x) * (1 + sc1) + sh1)
    want = h + g2 * block.ffn(ln(h) * (1 + sc2) + sh2, {})[0]
    assert torch.allclose(block(x, m.block_condition(tau), {})[0], want, atol=1e-6)


@pytest.mark.parametrize("kw", [
    dict(ffn="diffmoe", ffn_kwargs={"num_experts": 4}, ffn_every=2),
    dict(token_selector="random_route", token_selector_kwargs={"gamma": 0.5}, select_blocks=(1, 3)),
    dict(ffn="diffmoe", ffn_kwargs={"num_experts": 2}, token_selector="random_mask",
         token_selector_kwargs={"gamma": 0.5}, checkpointing=True),
])
def test_composes_with_moe_and_token_selection(kw):
    """MoE FFNs and token routing/masking run with adaln_single, and a loss reaches the (zero) output layer."""
    m = make("adaln_single", **kw)
    m.train()
    out = m(torch.randn(4, *SHAPE), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, *SHAPE) and torch.isfinite(out).all()
    ((out - torch.randn_like(out)).square().mean() + m.last_aux_loss).backward()
    assert m.final_layer.linear.weight.grad.abs().sum() > 0                 # the path from the output exists


def test_unknown_conditioning_and_maskdit_decoder_are_config_errors():
    with pytest.raises(ConfigError, match="backbone.conditioning"):
        make("adaln_one")
    with pytest.raises(ConfigError, match="backbone.conditioning"):
        make("adaln_single", token_selector="random_mask", token_selector_kwargs={"gamma": 0.5, "decoder_depth": 1})


def test_documented_text_dit_xl2_counts_are_what_the_counter_gives():
    """The figures the config comment states beside the seed's 891M -> 605M are recomputed from shapes here."""
    import re
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "harness" / "conf" / "backbone" / "dit_xl2_text.yaml"
    text = path.read_text()
    single, zero = (float(v) for v in re.search(r"Parameters \(harness describe\): ([\d.]+)M here, ([\d.]+)M with",
                                                text).groups())
    less_caption = float(re.search(r"caption projection \([\d.]+M\) is ([\d.]+)M", text).group(1))
    node = OmegaConf.to_container(OmegaConf.load(path))
    count = lambda n: describe(lambda: build_backbone(n, (4, 32, 32), 0), (4, 32, 32))["params"] / 1e6  # noqa: E731
    got_single, got_zero = count(node), count({**node, "conditioning": "adaln_zero"})
    assert round(got_single, 2) == single and round(got_zero, 2) == zero
    D, E = node["hidden_size"], node["text_dim"]
    caption_mlp = (E * D + D) + (D * D + D)                                # PixArt's caption Mlp
    assert round(got_single - caption_mlp / 1e6, 2) == less_caption


def test_official_dit_weights_refuse_an_adaln_single_model_before_reading_the_file(tmp_path):
    from harness.backbones.dit_import import check_official

    with pytest.raises(ConfigError, match="conditioning=adaln_single"):
        check_official(make("adaln_single"), tmp_path / "absent.pt")
