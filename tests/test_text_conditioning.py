"""Text conditioning of the DiT backbone (seed 003 Eq. 18, learned null caption for CFG) and the trainer's drop."""
from __future__ import annotations

import pytest
import torch

from harness.backbones.dit import DiT
from harness.core.errors import ConfigError
from harness.train.batches import apply_label_dropout

SHAPE, L, E = (4, 8, 8), 5, 12


def make(conditioning: str = "adaln_single", seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(in_shape=SHAPE, num_classes=0, patch_size=2, hidden_size=32, depth=2, num_heads=4,
               conditioning=conditioning, text_dim=E, text_len=L)


def randomise_but_cross_attn_out(m: DiT) -> None:
    """Random weights everywhere except the cross-attention output projections (kept at their init)."""
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "cross_attn.proj" not in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("conditioning", ["adaln_zero", "adaln_single"])
def test_zero_cross_attention_output_makes_captions_inert_at_init(conditioning):
    """Seed 003 zero-initialises the cross-attention output: the output then ignores the caption, and
    stops ignoring it once that projection is non-zero."""
    m = make(conditioning)
    assert all(torch.count_nonzero(b.cross_attn.proj.weight) == 0 for b in m.blocks)
    randomise_but_cross_attn_out(m)
    x, t = torch.randn(2, *SHAPE), torch.rand(2)
    a, b = m(x, t, torch.randn(2, L, E)), m(x, t, torch.randn(2, L, E))
    assert torch.count_nonzero(a) > 0 and torch.equal(a, b)
    with torch.no_grad():
        m.blocks[0].cross_attn.proj.weight.normal_(0, 0.2)
    assert not torch.allclose(m(x, t, torch.randn(2, L, E)), m(x, t, torch.randn(2, L, E)))


def test_dropped_items_use_the_learned_null_caption():
    """An all-NaN item (the trainer's drop mark) and y=None both read the learned null; other items are untouched."""
    m = make()
    with torch.no_grad():
        for b in m.blocks:
            b.cross_attn.proj.weight.normal_(0, 0.2)
    randomise_but_cross_attn_out(m)
    x, t, y = torch.randn(3, *SHAPE), torch.rand(3), torch.randn(3, L, E)
    drop = torch.tensor([False, True, False])
    y_drop = apply_label_dropout(y, drop, num_classes=0)
    assert torch.isnan(y_drop[1]).all() and torch.equal(y_drop[0], y[0]) and torch.equal(y_drop[2], y[2])
    out = m(x, t, y_drop)
    assert torch.allclose(out[1], m(x[1:2], t[1:2], None)[0], atol=1e-5)
    assert torch.allclose(out[1], m(x[1:2], t[1:2], m.y_embedder.null[None].detach())[0], atol=1e-5)
    assert torch.allclose(out[[0, 2]], m(x[[0, 2]], t[[0, 2]], y[[0, 2]]), atol=1e-5)
    # the null caption is a learned parameter: the loss reaches it through a dropped item
    m.zero_grad()
    m(x, t, y_drop).square().mean().backward()
    assert m.y_embedder.null.grad is not None and m.y_embedder.null.grad.abs().sum() > 0


def test_integer_labels_still_work_for_class_models():
    m = DiT(in_shape=SHAPE, num_classes=10, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    assert m(torch.randn(2, *SHAPE), torch.rand(2), torch.tensor([1, 9])).shape == (2, *SHAPE)
    y = apply_label_dropout(torch.tensor([1, 9]), torch.tensor([True, False]), num_classes=10)
    assert y.tolist() == [10, 9]
    with pytest.raises(ConfigError, match="text_dim"):
        m(torch.randn(2, *SHAPE), torch.rand(2), torch.randn(2, L, E))


def test_caption_shape_mismatch_is_one_line_config_error():
    m = make()
    with pytest.raises(ConfigError, match=rf"\(B, {L}, {E}\)") as err:
        m(torch.randn(2, *SHAPE), torch.rand(2), torch.randn(2, L + 1, E))
    assert "\n" not in str(err.value)
