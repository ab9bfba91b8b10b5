"""The text-conditioned CPU twin (experiment=text_dit_fmnist_mini): validates, trains a few steps, fails early without captions."""
from __future__ import annotations

import json
import os

import pytest
import torch

from harness.config import load
from harness.core.errors import ConfigError
from harness.train import train_unit
from harness.train.checkpoint import load_checkpoint
from harness.train.units import unit_from_config

EXP = "experiment=text_dit_fmnist_mini"


def cfg_for(tmp_path, *extra):
    os.environ["HARNESS_WORKDIR"] = str(tmp_path)
    try:
        return load([EXP, *extra])
    finally:
        os.environ.pop("HARNESS_WORKDIR")


def test_experiment_validates_with_adaln_single_and_text():
    cfg = load([EXP])
    assert cfg["backbone"]["conditioning"] == "adaln_single"
    assert (cfg["backbone"]["text_len"], cfg["backbone"]["text_dim"]) == (cfg["data"]["text_len"], cfg["data"]["text_dim"])


@pytest.mark.parametrize("extra, match", [
    (["data=fashion_mnist", "data.resolution=32"], "has no caption embeddings"),
    (["data.text_dim=16"], "data.text_dim=16 but backbone.text_dim=32"),
    (["backbone.text_dim=null"], "yields caption embeddings, backbone.text_dim is not set"),
])
def test_text_config_without_matching_captions_is_one_line_error(extra, match):
    with pytest.raises(ConfigError, match=match) as err:
        load([EXP, *extra])
    assert "\n" not in str(err.value)


def test_a_few_training_steps_move_the_null_caption_and_the_global_modulation(tmp_path):
    """3 steps at p_cfg = 0.5: the learned null caption and AdaLN-Single's global MLP both get trained."""
    cfg = cfg_for(tmp_path, "train.steps=3", "train.batch_size=16", "train.checkpoint_every=3", "data.limit=64",
                  "train.label_dropout=0.5")
    torch.set_num_threads(1)
    unit = unit_from_config(cfg, label="text")
    train_unit(unit, workdir=tmp_path, progress=False)
    ckpt = load_checkpoint(sorted(unit.directory(tmp_path).glob("ckpt_*.pt"))[-1])
    state = ckpt["model"]
    assert "y_embedder.null" in state and "t_block.t_block.1.weight" in state
    assert not any("adaLN_modulation" in k for k in state)
    torch.manual_seed(int(cfg["train"]["seed"]))
    from harness.backbones.build import build_backbone
    init = build_backbone(cfg["backbone"], (1, 32, 32), 10).state_dict()
    assert not torch.equal(state["y_embedder.null"], init["y_embedder.null"])
    assert torch.count_nonzero(state["t_block.t_block.1.weight"]) > 0   # left its zero init


def test_end_to_end_run_reports_the_alignment_stand_in(tmp_path):
    """Train a few steps, sample with CFG through the caption table, and score caption_class_accuracy in [0, 1]."""
    from harness.pipeline.experiment import run_experiment
    from tests.configs import load_in

    cfg = load_in(tmp_path, EXP, "run.progress=false", "train.steps=2", "train.batch_size=16", "data.limit=64",
                  "eval.n_samples=16", "eval.reference_n=64", "eval.batch_size=16", "sampler.steps=2",
                  "guidance=cfg", "guidance.scale=2.0")
    out = run_experiment(cfg)
    acc = out["metrics"]["caption_class_accuracy"]
    assert 0.0 <= acc <= 1.0
    assert "clip" not in json.dumps({k: v for k, v in out["metrics"].items()}).lower()


def test_guided_text_configs_are_flop_counted_with_a_caption_condition(tmp_path):
    """The cost of a text model's sampler is counted with one caption embedding as its condition (it was a
    silent gflops_error tag): CFG costs two forwards of the unguided one, the cross-attention included."""
    from harness.pipeline.cost import config_cost

    plain = config_cost(cfg_for(tmp_path))
    guided = config_cost(cfg_for(tmp_path, "guidance=cfg"))
    assert plain["gflops_per_nfe_torch"] > 0
    assert guided["gflops_per_nfe_torch"] == pytest.approx(2 * plain["gflops_per_nfe_torch"], rel=1e-6)
    without_text = config_cost(cfg_for(tmp_path, "data=fashion_mnist", "data.resolution=32", "backbone.text_dim=null",
                                       "backbone.conditioning=adaln_zero"))
    assert without_text["gflops_per_nfe_torch"] < plain["gflops_per_nfe_torch"]      # cross-attention counted
