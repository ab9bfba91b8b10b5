"""MaskDiT-style masking (seed 004 Eq. 4; Zheng et al. 2023, Anima-Lab/MaskDiT): masked tokens come back
with a position, MaskDiT's decoder, its per-patch normalised MAE target, and Sparse Guidance on top (issue 16)."""
from __future__ import annotations

import pytest
import torch

from harness.backbones.dit import DiT, sincos_pos_embed_2d
from harness.backbones.token_selection import RandomMask, num_routed
from harness.core.errors import ConfigError
from harness.field import Net
from harness.field.guided import Branch, Guided
from harness.objectives import build_objective
from harness.pipeline.cost import field_call_cost

SHAPE = (1, 8, 8)          # 16 tokens at patch 2
D, DEPTH, DEC = 32, 3, 16  # trunk width and depth, decoder width
DECODER = {"decoder_depth": 2, "decoder_dim": DEC, "decoder_heads": 2}


def masked_dit(decoder: bool, seed: int = 0, **kw) -> DiT:
    """A tiny labelled masking DiT, weights moved off zero; with MaskDiT's decoder, or the trunk's last block as one."""
    torch.manual_seed(seed)
    kwargs = {"gamma": 0.5, **(DECODER if decoder else {}), **kw}
    model = DiT(in_shape=SHAPE, num_classes=3, patch_size=2, hidden_size=D, depth=DEPTH, num_heads=4,
                token_selector="random_mask", token_selector_kwargs=kwargs,
                select_blocks=(0, DEPTH) if decoder else (0, DEPTH - 1))
    for p in model.parameters():  # adaLN-Zero and MaskDiT's zeroed decoder start at zero: perturb so every path matters
        p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


def batch(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.rand(n, generator=g), torch.randint(3, (n,), generator=g)


def masked_ids(model: DiT, n: int, seed: int, gamma: float = 0.5) -> torch.Tensor:
    """(n, S) bool: the tokens the forward masks with ``torch.Generator().manual_seed(seed)`` (same draw)."""
    _, ids = model.token_selector.select(torch.zeros(n, model.num_tokens, D), torch.Generator().manual_seed(seed),
                                         gamma=gamma)
    return torch.ones(n, model.num_tokens, dtype=torch.bool).scatter_(1, ids, False)


def all_rows_distinct(rows: torch.Tensor) -> bool:
    """(N, W): no two rows equal."""
    gaps = torch.cdist(rows.double(), rows.double()) + torch.eye(len(rows), dtype=torch.float64)
    return bool((gaps > 1e-6).all())


# ------------------------------------------------------------------ (a) position of masked tokens
@pytest.mark.parametrize("decoder", [False, True], ids=["trunk-decoder", "maskdit-decoder"])
def test_masked_positions_get_distinct_decoder_inputs_and_outputs(decoder: bool) -> None:
    """Each masked token re-enters as e_mask + its position embedding, so two masked positions of one
    sample differ going into the decoder and coming out of it (a bare e_mask made them identical)."""
    model = masked_dit(decoder)
    x, t, y = batch()
    first = model.mask_decoder.blocks[0] if decoder else model.blocks[DEPTH - 1]
    seen = []
    hook = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = model.tokens_of(model(x, t, y, gamma=0.5, generator=torch.Generator().manual_seed(5)))
    hook.remove()
    masked = masked_ids(model, len(x), 5)
    for b in range(len(x)):
        assert int(masked[b].sum()) == num_routed(16, 0.5)
        assert all_rows_distinct(seen[0][b][masked[b]])   # decoder inputs at the masked positions
        assert all_rows_distinct(out[b][masked[b]])       # and the patches the decoder makes there
    # still Eq. 4: the content of a masked patch never reaches the output (position is not content)
    x2 = model.unpatchify(model.tokens_of(x).masked_fill(masked.unsqueeze(-1), 7.0))
    out2 = model.tokens_of(model(x2, t, y, gamma=0.5, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(x, x2) and torch.equal(out, out2)


def test_restore_adds_the_decoder_position_embedding_to_every_token_only_with_a_decoder() -> None:
    """No decoder: kept tokens come back as processed (they carry their position since patchify).
    MaskDiT's decoder: its position embedding is added to every token (models/maskdit.py l. 545)."""
    grid_pos = lambda width: sincos_pos_embed_2d(width, 4, 4)  # noqa: E731
    x = torch.randn(2, 16, D)
    for spec, width in (({}, D), (DECODER, DEC)):
        sel = RandomMask(gamma=0.25, dim=D, positions=grid_pos, **spec).train()
        kept, ids = sel.select(x, torch.Generator().manual_seed(0))
        processed = torch.randn(2, 12, width)
        full = sel.restore(processed, x, ids)
        masked = torch.ones(2, 16, dtype=torch.bool).scatter_(1, ids, False)
        pos = grid_pos(width).expand(2, -1, -1)
        extra = pos if spec else torch.zeros_like(pos)
        kept_extra = extra.gather(1, ids.unsqueeze(-1).expand(-1, -1, width))              # (B, S', width)
        assert torch.equal(full[~masked], (processed + kept_extra).flatten(0, 1))
        assert torch.equal(full[masked], (sel.mask_token + pos)[masked])


# ------------------------------------------------------------------ (b) MAE target and loss
def mae_by_definition(out: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, norm: bool) -> float:
    """MaskDiT's mae_loss (train_utils/loss.py l. 88-101), written out with loops: per masked patch the mean
    squared error against the patch normalised by its own mean and unbiased variance (+1e-6); mean over a
    sample's masked patches, then over the batch."""
    per_sample = []
    for b in range(out.shape[0]):
        errors = []
        for s in range(out.shape[1]):
            if not masked[b, s]:
                continue
            v = target[b, s].tolist()
            if norm:
                mu = sum(v) / len(v)
                var = sum((a - mu) ** 2 for a in v) / (len(v) - 1)
                v = [(a - mu) / (var + 1e-6) ** 0.5 for a in v]
            errors.append(sum((o - a) ** 2 for o, a in zip(out[b, s].tolist(), v)) / len(v))
        per_sample.append(sum(errors) / len(errors))
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("norm_target", [True, False])
def test_mae_loss_is_the_per_patch_normalised_error_on_masked_tokens_only(norm_target: bool) -> None:
    sel = RandomMask(gamma=0.5, dim=4, mae_weight=0.1, norm_target=norm_target).train()
    g = torch.Generator().manual_seed(3)
    out, target = torch.randn(2, 8, 6, generator=g), 3.0 + 2.0 * torch.randn(2, 8, 6, generator=g)
    _, ids = sel.select(torch.zeros(2, 8, 4), torch.Generator().manual_seed(4))
    masked = torch.ones(2, 8, dtype=torch.bool).scatter_(1, ids, False)
    _, loss = sel.finish(out, target, ids)
    assert float(loss) == pytest.approx(0.1 * mae_by_definition(out, target, masked, norm_target), rel=1e-5)
    raw = mae_by_definition(out, target, masked, False)
    assert (float(loss) == pytest.approx(0.1 * raw, rel=1e-5)) != norm_target   # the normalisation matters here
    visible_changed = torch.where(masked.unsqueeze(-1), out, out + 5.0)
    assert torch.equal(sel.finish(visible_changed, target, ids)[1], loss)       # visible tokens: no MAE term
    masked_changed = torch.where(masked.unsqueeze(-1), out + 5.0, out)
    assert not torch.equal(sel.finish(masked_changed, target, ids)[1], loss)


def test_norm_target_is_maskdits_default_and_the_forward_uses_the_input_patches() -> None:
    """The DiT's MAE term is the selector's on (output tokens, noisy input tokens), with norm_target on by default."""
    model = masked_dit(True).train()
    assert model.token_selector.norm_target and model.token_selector.mae_weight == 0.1
    x, t, y = batch(3)
    out = model.tokens_of(model(x, t, y, generator=torch.Generator().manual_seed(2)))
    expected = 0.1 * mae_by_definition(out.detach(), model.tokens_of(x), masked_ids(model, 3, 2), True)
    assert float(model.last_aux_loss.detach()) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ (c) gamma 0: unmasked, through the decoder
def unmasked_maskdit_forward(model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, with_pos: bool = True):
    """MaskDiT's forward at mask ratio 0 (models/maskdit.py l. 511-557), written out from the model's parts."""
    h, c = model.patchify(x), model.condition(t, y, len(x))
    for block in model.blocks:
        h, _ = block(h, c, {})
    h = model.mask_decoder.embed(h, c)
    if with_pos:
        h = h + sincos_pos_embed_2d(DEC, *model.grid)
    for block in model.mask_decoder.blocks:
        h, _ = block(h, c, {})
    return model.unpatchify(model.final_layer(h, c))


def test_gamma_zero_is_the_unmasked_forward_through_the_decoder() -> None:
    model = masked_dit(True)
    x, t, y = batch()
    ref = unmasked_maskdit_forward(model, x, t, y)
    assert torch.equal(model(x, t, y, gamma=0.0), ref)
    assert torch.equal(model(x, t, y), ref)                        # eval: inference_gamma 0 (MaskDiT samples unmasked)
    assert not torch.allclose(unmasked_maskdit_forward(model, x, t, y, with_pos=False), ref)  # the position matters
    model.train()
    assert torch.equal(model(x, t, y, gamma=0.0), ref)            # MaskDiT's mask ratio 0 ("unmasking tuning")
    assert float(model.last_aux_loss) == 0.0
    assert not torch.allclose(model(x, t, y, gamma=0.5, generator=torch.Generator().manual_seed(0)), ref)


def test_the_decoder_trains_and_starts_at_zero_like_maskdit() -> None:
    torch.manual_seed(0)
    fresh = DiT(in_shape=SHAPE, num_classes=3, patch_size=2, hidden_size=D, depth=DEPTH, num_heads=4,
                token_selector="random_mask", token_selector_kwargs={"gamma": 0.5, **DECODER})
    assert fresh.select_blocks == (0, DEPTH)                       # default range with a decoder: MaskDiT's encoder
    assert fresh.final_layer.linear.in_features == DEC and len(fresh.mask_decoder.blocks) == 2
    x, t, y = batch()
    assert torch.equal(fresh(x, t, y), torch.zeros_like(x))       # adaLN-Zero, MaskDiT's zeroed decoder projection
    model = masked_dit(True).train()
    model(x, t, y, generator=torch.Generator().manual_seed(0))
    model.last_aux_loss.backward()                                 # the MAE term reaches e_mask and the decoder
    assert float(model.token_selector.mask_token.grad.abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.mask_decoder.blocks[0].parameters())


# ------------------------------------------------------------------ (d) Sparse Guidance and its GFLOPs
def test_sparse_guidance_runs_on_the_masking_backbone() -> None:
    field = Net(masked_dit(True), build_objective({"name": "flow_matching"}))
    x, t, y = batch(4)
    sg = Guided(Branch(field, "cond", 0.0, stream=0), Branch(field, "cond", 0.5, stream=1), 2.0, seed=0)
    out = sg(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, field(x, t, y))                 # the masked weak branch steers


def test_masked_gflops_fall_by_the_hand_count_on_cpu_and_on_the_meta_device() -> None:
    """Per masked token: its 12 D^2 multiply-adds in every encoder block and its D x D_dec decoder projection
    (seed 004's convention: linear layers only); the decoder's blocks run on every token whatever gamma."""
    field = Net(masked_dit(True), build_objective({"name": "flow_matching"}))
    costs = {g: field_call_cost(Guided(Branch(field, "cond", g), Branch(field, "cond", g), 1.0), SHAPE, 3)
             for g in (0.0, 0.25, 0.5, 0.75)}
    layers = lambda c: c.total - c.attention  # noqa: E731
    for g, c in costs.items():
        saved = num_routed(16, g) * (DEPTH * 12 * D * D + D * DEC) * 2                    # FLOPs = 2 MACs
        assert layers(costs[0.0]) - layers(c) == 2 * saved                                   # 2 branches

    from harness.api.guidance import build_guidance
    from harness.config import compose, validate
    from harness.pipeline.assemble import assemble_meta

    base = validate(compose(["experiment=sg_masking_sit_xl2_imagenet256", "data.root=/tmp"]))
    meta, _ = assemble_meta(dict(base, guidance={"name": "none"}), (4, 32, 32), 1000)
    sg = {gw: field_call_cost(build_guidance(dict(base, guidance={"name": "sparse", "scale": 1.5, "gamma_strong": 0.0,
                                                                   "gamma_weak": gw})).wrap(meta, {}, 1000),
                              (4, 32, 32), 1000, device="meta")
          for gw in (0.0, 0.3)}
    assert layers(sg[0.0]) - layers(sg[0.3]) == num_routed(256, 0.3) * (28 * 12 * 1152 ** 2 + 1152 * 512) * 2


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("kwargs,select_blocks,key", [
    (DECODER, (0, DEPTH - 1), "backbone.select_blocks"),
    ({"decoder_depth": 1, "decoder_dim": 18}, (0, DEPTH), "backbone.token_selector_kwargs.decoder_dim"),
    ({"decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 3}, (0, DEPTH),
     "backbone.token_selector_kwargs.decoder_heads"),
    ({"decoder_dim": 16}, (0, DEPTH), "backbone.token_selector_kwargs.decoder_dim"),
    ({"decoder_depth": -1}, (0, DEPTH), "backbone.token_selector_kwargs.decoder_depth"),
])
def test_impossible_decoder_settings_are_config_errors(kwargs: dict, select_blocks: tuple, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        DiT(in_shape=SHAPE, num_classes=3, patch_size=2, hidden_size=D, depth=DEPTH, num_heads=4,
            token_selector="random_mask", token_selector_kwargs={"gamma": 0.5, **kwargs}, select_blocks=select_blocks)
    assert err.value.one_line().startswith(key) and "\n" not in err.value.one_line()


def test_without_a_decoder_the_checkpoint_keys_are_unchanged() -> None:
    """The position table is a non-persistent buffer: earlier random_mask checkpoints still load."""
    dense = DiT(in_shape=SHAPE, num_classes=3, patch_size=2, hidden_size=D, depth=DEPTH, num_heads=4)
    assert set(masked_dit(False).state_dict()) - set(dense.state_dict()) == {"token_selector.mask_token"}
