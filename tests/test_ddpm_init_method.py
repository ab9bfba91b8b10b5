"""method=ddpm_init (seed 003 Sec. 3.2.2's twin): the DDPM pretrain is a unit of its own, trained in prepare,
and the network starts from its checkpoint by Eq. 20; pretrain.steps=0 is the same network from scratch."""
from __future__ import annotations

import torch

from harness.pipeline.assemble import method_for
from harness.pipeline.training import train_units
from harness.train.checkpoint import load_checkpoint
from harness.train.units import done_record
from tests.configs import load_in

TINY = ("experiment=ddpm_init_fmnist_mini", "backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2",
        "train.batch_size=8", "train.steps=2", "data.limit=64", "run.progress=false")


def test_init_arm_starts_from_the_mnist_ddpm_unit_and_scratch_does_not(tmp_path):
    cfg = load_in(tmp_path, *TINY, "method.pretrain.steps=3")
    method = method_for(cfg, prepare=False)
    assert method.needs_prepare()
    source = method.pretrain_unit()
    assert source.data["name"] == "mnist" and source.objective == {"name": "ddpm", "schedule": "cosine"}
    assert "time_map" not in source.backbone                      # a DDPM source: no Eq. 21 map
    method.prepare()
    assert done_record(source.directory(tmp_path)) is not None
    (spec,) = method.units().values()
    assert spec.backbone["init_transfer"] == "eq20" and spec.backbone["time_map"] == "eq21"
    assert spec.data["name"] == "fashion_mnist"
    train_units({"model": spec}, cfg)
    record = done_record(spec.directory(tmp_path))
    assert record["init_from"]["mode"] == "eq20" and record["init_from"]["layout"] == "harness"
    # a later seed of the same cell reuses the source (one pretrain for every cell)
    again = method_for(load_in(tmp_path, *TINY, "method.pretrain.steps=3", "train.seed=1"), prepare=False)
    assert again.pretrain_unit().hash == source.hash

    scratch = method_for(load_in(tmp_path, *TINY, "method.pretrain.steps=0"), prepare=False)
    assert not scratch.needs_prepare()
    (plain,) = scratch.units().values()
    assert "init_from" not in plain.backbone and plain.backbone["time_map"] == "eq21"
    # both arms share the architecture: the init arm's step-2 weights load into the scratch arm's network
    ckpt = load_checkpoint(spec.directory(tmp_path) / record["checkpoint"])
    from harness.backbones.build import build_backbone

    net = build_backbone(plain.backbone, (1, 28, 28), 10)
    net.load_state_dict(ckpt["model"])
    assert torch.isfinite(torch.cat([p.flatten() for p in net.parameters()])).all()
