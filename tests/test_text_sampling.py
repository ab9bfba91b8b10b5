"""Sampling a text DiT: caption indices -> embeddings, CFG's null branch is the learned null caption; the alignment stand-in."""
from __future__ import annotations

import pytest
import torch

from harness.backbones.dit import DiT
from harness.data.base import build_dataset
from harness.evaluate.feature_extractors import SmallCNN
from harness.evaluate.text_alignment import NAME, caption_class_accuracy
from harness.field.base import Net
from harness.field.captions import CaptionConditioned
from harness.field.guided import Branch, Guided
from harness.objectives import build_objective

SHAPE, L, E = (4, 8, 8), 5, 12


def text_field(seed: int = 0):
    torch.manual_seed(seed)
    m = DiT(in_shape=SHAPE, num_classes=3, patch_size=2, hidden_size=32, depth=2, num_heads=4,
            conditioning="adaln_single", text_dim=E, text_len=L).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m, Net(m, build_objective({"name": "flow_matching"}))


def test_caption_indices_and_cfg_null_branch():
    model, net = text_field()
    table = torch.randn(3, L, E)
    field = CaptionConditioned(net, table)
    x, t, y = torch.randn(2, *SHAPE), torch.full((2,), 0.3), torch.tensor([2, 0])
    assert torch.allclose(field(x, t, y), net(x, t, table[y]))
    cfg = Guided(Branch(field, "cond"), Branch(field, "null"), scale=3.0, num_classes=3)
    cond, uncond = net(x, t, table[y]), net(x, t, None)
    assert not torch.allclose(cond, uncond)                                # captions matter once trained
    assert torch.allclose(cfg(x, t, y), uncond + 3.0 * (cond - uncond), atol=1e-5)
    # the null branch is the learned null caption, not zeros
    null = model.y_embedder.null.detach()[None].expand(2, -1, -1)
    assert torch.allclose(uncond, net(x, t, null), atol=1e-5)

    # DiffMoE-style pooled halves (one forward over 2B items, null as row num_classes) give the same CFG
    net.shares_batch = True
    pooled = Guided(Branch(field, "cond"), Branch(field, "null"), scale=3.0, num_classes=3)
    assert pooled.pools_halves(x, t)
    assert torch.allclose(pooled(x, t, y), uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert torch.allclose(pooled(x, t, table[y]), uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_caption_class_accuracy_rewards_the_right_class():
    """On real test digits, the trained classifier agrees with the true class far more than with a shifted one."""
    clf = SmallCNN(train_on="digits", epochs=2, resolution=8, batch_size=64)
    ds = build_dataset({"name": "digits", "split": "test"})
    images = ds.to_uint8_images()[:300]
    labels = ds.y[:300]
    right = caption_class_accuracy(images, labels, clf)
    wrong = caption_class_accuracy(images, (labels + 1) % 10, clf)
    assert right[NAME] > wrong[NAME] + 0.3 and right["n"] == 300
    assert "clip" not in NAME.lower() and "not a CLIP score" in right["note"]
    with pytest.raises(ValueError):
        caption_class_accuracy(images, labels[:10], clf)
