"""Caption-embedding shards, their metadata checks, the stand-in text encoder and the Fashion-MNIST caption twin."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.core.errors import ConfigError, DataError
from harness.data.base import build_dataset
from harness.data.captions import META, CaptionedDataset, check_against_backbone, with_caption_shards
from harness.data.standin_text import ENCODER, encode_captions

N, L, E = 20, 6, 10


def write_shards(root, sizes=(12, 8), shape=(L, E), dtype="float32", meta_shape=(L, E), seed=0):
    rng = np.random.default_rng(seed)
    names, arrays = [], []
    for i, n in enumerate(sizes):
        arr = rng.standard_normal((n, *shape)).astype(dtype)
        name = f"c_{i:03d}.npy" if i % 2 == 0 else f"c_{i:03d}.pt"
        if name.endswith(".npy"):
            np.save(root / name, arr)
        else:
            torch.save(torch.from_numpy(arr), root / name)
        names.append(name)
        arrays.append(arr)
    (root / META).write_text(json.dumps({"format": "harness-captions-v1", "encoder": "openai/clip-vit-large-patch14",
                                         "text_len": meta_shape[0], "text_dim": meta_shape[1], "dtype": "float32",
                                         "shards": names}))
    return np.concatenate(arrays)


def rows():
    return build_dataset({"name": "fashion_mnist", "limit": N})


def test_shards_pair_with_rows_in_order_across_npy_and_pt(tmp_path):
    want = write_shards(tmp_path)
    ds = with_caption_shards(rows(), tmp_path)
    idx = torch.tensor([0, 11, 12, 19, 5])
    x, caps = ds.get_batch(idx)
    assert torch.equal(x, rows().get_batch(idx)[0])
    assert torch.equal(caps, torch.from_numpy(want[idx.numpy()]))
    sub = ds.subset(0.5, seed=1)                    # a subset keeps each row with its own caption
    j = torch.arange(len(sub))
    assert torch.equal(sub.get_batch(j)[1], torch.from_numpy(want[sub.index.numpy()]))
    assert ds.info["captions"]["encoder"] == "openai/clip-vit-large-patch14"


def test_registered_captioned_node_builds_from_config(tmp_path):
    want = write_shards(tmp_path)
    ds = build_dataset({"name": "captioned", "base": {"name": "fashion_mnist", "limit": N}, "captions": str(tmp_path)})
    assert isinstance(ds, CaptionedDataset) and torch.equal(ds.get_batch(torch.tensor([3]))[1][0], torch.from_numpy(want[3]))


@pytest.mark.parametrize("shape, key", [((L + 1, E), "text_len"), ((L, E + 2), "text_dim")])
def test_a_shard_that_disagrees_with_its_metadata_names_file_and_key(tmp_path, shape, key):
    write_shards(tmp_path, shape=shape)
    with pytest.raises(DataError, match=rf"c_000\.npy.*'{key}'") as err:
        with_caption_shards(rows(), tmp_path)
    assert "\n" not in str(err.value)


def test_row_count_and_backbone_mismatches_are_one_line_errors(tmp_path):
    write_shards(tmp_path, sizes=(12, 7))
    with pytest.raises(DataError, match="19 captions"):
        with_caption_shards(rows(), tmp_path)
    write_shards(tmp_path)
    ds = with_caption_shards(rows(), tmp_path)
    check_against_backbone(ds, L, E)                                      # agrees: no error
    with pytest.raises(ConfigError, match=rf"{META}: key 'text_dim' is {E}, backbone.text_dim is 768"):
        check_against_backbone(ds, L, 768)
    with pytest.raises(ConfigError, match=rf"{META}: key 'text_len' is {L}, backbone.text_len is 77"):
        check_against_backbone(ds, 77, E)
    with pytest.raises(ConfigError, match="has no caption embeddings"):
        check_against_backbone(rows(), 77, 768)                           # text backbone, no captions
    with pytest.raises(ConfigError, match="no text_dim"):
        check_against_backbone(ds, None, None)                           # class backbone, captions


def test_standin_encoder_is_deterministic_and_tells_captions_apart():
    caps = ["a photo of a Bag", "a photo of a Coat", "a photo of a Bag"]
    a, b = encode_captions(caps, 8, 32), encode_captions(list(reversed(caps)), 8, 32)
    assert a.shape == (3, 8, 32) and torch.equal(a[0], a[2]) and torch.equal(a[0], b[0])
    assert not torch.allclose(a[0], a[1])
    assert torch.equal(a[0, :3], a[1, :3])                                # shared tokens "a photo of" agree


def test_fashion_mnist_twin_captions_each_item_by_its_class():
    ds = build_dataset({"name": "fashion_mnist_captioned", "limit": 40, "text_len": 8, "text_dim": 16})
    _, caps = ds.get_batch(torch.arange(40))
    table = encode_captions([f"a photo of a {c}" for c in ds.info["classes"]], 8, 16)
    assert torch.equal(caps, table[ds.y])
    assert ds.info["captions"]["encoder"] == ENCODER and "clip" not in json.dumps(ds.info["captions"]).lower()
