"""Seed 003 Sec. 2.6: a DDPM-eps DiT checkpoint into a new expert by Eq. 20, with Eq. 21's time map.

Sources are a harness unit checkpoint (written by the real ``save_checkpoint``) and an official DiT file
(diffusers' DiT under DiT models.py's names, built independently of the key map in ``dit_import``).
"""
from __future__ import annotations

import math

import pytest
import torch

from harness.backbones.dit import DiT
from harness.backbones.dit_transfer import check_transfer, transfer_ddpm
from harness.core.errors import CheckpointError, ConfigError
from harness.core.versions import CONFIG_VERSION
from harness.objectives.conversions import ddpm_timestep
from harness.train.checkpoint import save_checkpoint
from harness.train.units import UnitSpec

C, SIZE, P, D, DEPTH, HEADS, K = 4, 8, 2, 32, 2, 2, 10


def dit(seed: int = 0, **kwargs) -> DiT:
    torch.manual_seed(seed)
    base = dict(in_shape=(C, SIZE, SIZE), num_classes=K, patch_size=P, hidden_size=D, depth=DEPTH, num_heads=HEADS)
    return DiT(**{**base, **kwargs}).eval()


def trained_source(seed: int = 1, **kwargs) -> DiT:
    """A DDPM DiT whose every weight is non-trivial (adaLN-Zero's zeros would hide a missing copy)."""
    model = dit(seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def harness_ckpt(model: DiT, tmp_path) -> str:
    sd = model.state_dict()
    return str(save_checkpoint(tmp_path / "src", 100, {"model": sd, "ema": sd}, config={}, config_version=CONFIG_VERSION))


def test_transferred_tensors_equal_the_source_bitwise_and_the_rest_is_new(tmp_path):
    source = trained_source(learn_sigma=True)
    expert = dit(seed=5, num_classes=0)           # unconditional FM expert (a text model has no class table)
    record = transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    src, got = source.state_dict(), expert.state_dict()
    moved = [k for k in got if k.startswith(("x_embedder.", "t_embedder.", "blocks."))]
    assert len(moved) == len([k for k in src if k.startswith(("x_embedder.", "t_embedder.", "blocks."))])
    for k in moved:
        assert torch.equal(got[k], src[k]), k
    assert torch.equal(expert.pos_embed, source.pos_embed)
    assert not any(k.startswith("label_embed.") for k in got)          # class embedding removed
    # learned sigma: the source head has 2C channels, the expert's C; it is renewed, not sliced from the source
    assert src["final_layer.linear.weight"].shape[0] == 2 * got["final_layer.linear.weight"].shape[0]
    assert any("sigma" in d for d in record.dropped) and any("label_embed" in d for d in record.dropped)
    assert record.layout == "harness" and record.entry == "ema"


@pytest.mark.parametrize("key", ["final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"])
def test_the_final_layer_is_reinitialised_n0_002(tmp_path, key):
    source = trained_source()
    expert = dit(seed=5)
    transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    w = expert.state_dict()[key].flatten()
    n = w.numel()
    # sample std of n N(0, s^2) draws: relative sd ~ 1/sqrt(2n); 6 of those is a bound a wrong init fails
    assert abs(w.std().item() / 0.02 - 1) < 6 / math.sqrt(2 * n), (w.std().item(), n)
    assert abs(w.mean().item()) < 6 * 0.02 / math.sqrt(n)
    assert torch.count_nonzero(expert.state_dict()[key.replace("weight", "bias")]) == 0
    assert not torch.equal(expert.state_dict()[key], source.state_dict()[key])


def test_the_experts_own_class_table_is_not_the_sources(tmp_path):
    source = trained_source()
    expert = dit(seed=5)
    fresh = expert.label_embed.table.weight.detach().clone()
    transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    assert torch.equal(expert.label_embed.table.weight, fresh)
    assert not torch.equal(expert.label_embed.table.weight, source.label_embed.table.weight)


def trunk(model: DiT, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, conditioning) entering the final layer."""
    seen = {}
    handle = model.final_layer.register_forward_pre_hook(lambda m, args: seen.update(h=args[0], c=args[1]))
    with torch.no_grad():
        model(x, t, None)
    handle.remove()
    return seen["h"], seen["c"]


def test_eq21_an_fm_expert_at_harness_t_computes_the_sources_features_at_step_round_999_1_minus_t(tmp_path):
    """Exact at init (the final layer is new, so the eps is not): the trunk under the time map.

    The source is fed DiT's own step index as our t (k / 1000 embedded as 1000 t, exact in float32
    for these multiples of 125); the expert is fed harness t, whose noise end is t = 0.
    """
    source = trained_source(num_classes=0)
    expert = dit(seed=5, num_classes=0, time_map="eq21")
    transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    steps = torch.tensor([0, 125, 500, 875])
    t = 1 - steps / 999                      # harness t whose seed time round(999 t_seed) is that step
    assert torch.equal(ddpm_timestep(1 - t), steps)
    x = torch.randn(4, C, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    h_e, c_e = trunk(expert, x, t)
    h_s, c_s = trunk(source, x, steps / 1000)
    torch.testing.assert_close(c_e, c_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_e, h_s, rtol=0, atol=1e-5)
    # the wrong direction (round(999 t)) conditions on the opposite end of the schedule: caught
    h_w, _ = trunk(source, x, torch.flip(steps, [0]) / 1000)
    assert (h_e - h_w).abs().max() > 1e-3
    # the seed's construction makes the eps read-out new: the expert's output is not the source's eps
    with torch.no_grad():
        assert not torch.allclose(expert(x, t), source(x, steps / 1000), atol=1e-3)


def test_an_official_dit_file_transfers_through_the_official_names(tmp_path):
    pytest.importorskip("diffusers")
    from tests.test_dit_import import official_state, reference

    state = official_state(reference())
    path = tmp_path / "DiT-tiny.pt"
    torch.save({"model": state, "ema": state, "args": None}, path)
    expert = dit(seed=5, num_classes=0)
    record = transfer_ddpm(expert, path)
    got = expert.state_dict()
    assert torch.equal(got["x_embedder.weight"], state["x_embedder.proj.weight"])
    assert torch.equal(got["blocks.1.ffn.fc2.bias"], state["blocks.1.mlp.fc2.bias"])
    assert torch.equal(got["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert record.layout == "official" and any("y_embedder" in d for d in record.dropped)


def test_a_checkpoint_with_no_blocks_is_one_line(tmp_path):
    sd = {k: v for k, v in trained_source().state_dict().items() if not k.startswith("blocks.")}
    path = tmp_path / "noblocks.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        transfer_ddpm(dit(), path)
    assert "no transformer block" in str(err.value) and "\n" not in str(err.value)


def test_another_hidden_size_names_the_key_and_both_shapes_and_copies_nothing(tmp_path):
    source = trained_source(hidden_size=64, num_heads=2)
    expert = dit(seed=5)
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    msg = str(err.value)
    assert "x_embedder.weight" in msg and "(64, 4, 2, 2)" in msg and "(32, 4, 2, 2)" in msg and "\n" not in msg
    assert all(torch.equal(before[k], v) for k, v in expert.state_dict().items())


def test_describe_reads_the_report_from_shapes_on_meta(tmp_path):
    path = harness_ckpt(trained_source(), tmp_path)
    with torch.device("meta"):
        expert = dit(num_classes=0)
    record = check_transfer(expert, path)
    assert any(g.startswith("blocks 0-1") for g in record.transferred)
    assert any(g.startswith("final_layer") for g in record.reinitialised)


def test_time_map_is_for_flow_matching_experts_and_transfer_needs_a_source(tmp_path):
    base = dict(label="e", data={"name": "mnist"}, train={"steps": 1})
    with pytest.raises(ConfigError, match="Eq. 21"):
        UnitSpec(backbone={"name": "dit", "time_map": "eq21"}, objective={"name": "ddpm"}, **base)
    UnitSpec(backbone={"name": "dit", "time_map": "eq21"}, objective={"name": "flow_matching"}, **base)
    with pytest.raises(ConfigError, match="init_from"):
        UnitSpec(backbone={"name": "dit", "init_transfer": "eq20"}, objective={"name": "flow_matching"}, **base)
    with pytest.raises(ConfigError, match="eq20"):
        UnitSpec(backbone={"name": "dit", "init_transfer": "ddpm"}, objective={"name": "flow_matching"}, **base)


def test_an_adaln_single_text_expert_takes_the_trunk_and_builds_its_own_conditioning(tmp_path):
    """Seed 003's experts: DiT with AdaLN-Single and cross-attention, initialised from a class-conditional DDPM
    DiT by Eq. 20.  Attention and FFN of every block come from the source bitwise; the per-block adaLN MLPs are
    dropped (AdaLN-Single has none); t_block, E_b, cross-attention and the null caption keep the backbone's own
    init (zero final projections: the expert starts as its trunk with identity blocks); the caption MLP
    (Eq. 20's text_proj) is N(0, 0.02)."""
    source = trained_source()
    expert = dit(seed=5, num_classes=0, conditioning="adaln_single", text_dim=16, text_len=5)
    fresh = {k: v.clone() for k, v in expert.state_dict().items()}
    record = transfer_ddpm(expert, harness_ckpt(source, tmp_path))
    src, got = source.state_dict(), expert.state_dict()
    trunk = [k for k in got if k.startswith("blocks.") and (".attn." in k or ".ffn." in k)]
    assert trunk and all(torch.equal(got[k], src[k]) for k in trunk)
    for k in ("x_embedder.weight", "t_embedder.mlp.0.weight"):
        assert torch.equal(got[k], src[k])
    own = [k for k in got if k.startswith(("t_block.", "y_embedder.null")) or ".scale_shift_table" in k
           or ".cross_attn." in k]
    assert own and all(torch.equal(got[k], fresh[k]) for k in own)          # untouched: the backbone's init
    assert got["blocks.0.cross_attn.proj.weight"].abs().max() == 0          # zero-initialised output (Eq. 18)
    w = torch.cat([got[k].flatten() for k in got if k.startswith("y_embedder.proj.") and k.endswith("weight")])
    assert abs(float(w.std()) - 0.02) < 0.004 and not torch.equal(w, torch.cat(
        [fresh[k].flatten() for k in got if k.startswith("y_embedder.proj.") and k.endswith("weight")]))
    assert any("per-block adaLN" in d for d in record.dropped)
    assert any("t_block" in r and "new" in r for r in record.reinitialised)
