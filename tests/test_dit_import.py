"""Official DiT/SiT checkpoints load into our dit/sit backbones and give their outputs (issue 18 item 1).

The reference network is diffusers' ``DiTTransformer2DModel`` (tiny, random weights), written out
under the official names of facebookresearch/DiT ``models.py`` by :func:`official_state` (written here
from those names, independently of :mod:`harness.backbones.dit_import`), saved, and imported.  Two
things make diffusers' DiT the official one, both set on the reference and cited where they are:
one shared t/y embedder (diffusers keeps a copy per block) and DiT's sinusoid frequencies.
"""
from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from harness.backbones.dit import DiT, SiT
from harness.backbones.dit_import import check_architecture, import_official
from harness.core.errors import HarnessError

diffusers = pytest.importorskip("diffusers")

C, SIZE, P, D, DEPTH, HEADS, K = 4, 8, 2, 32, 2, 2, 10


def reference(*, seed: int = 0, official_freqs: bool = True, **config) -> torch.nn.Module:
    """A tiny diffusers DiT (learn_sigma: 2C outputs) made to compute the official DiT's function."""
    kwargs = dict(num_attention_heads=HEADS, attention_head_dim=D // HEADS, in_channels=C, out_channels=2 * C,
                  num_layers=DEPTH, sample_size=SIZE, patch_size=P, num_embeds_ada_norm=K,
                  norm_eps=1e-6)   # DiT's DiTBlock.norm2 eps (diffusers' norm3 defaults to 1e-5)
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(**{**kwargs, **config}).eval()
    shared = model.transformer_blocks[0].norm1.emb.state_dict()  # DiT: one t_embedder/y_embedder for all blocks
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    if official_freqs:  # DiT timestep_embedding: exp(-ln(1e4) k / half); diffusers' DiT shifts to / (half - 1)
        for block in model.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model


def official_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers' DiT under the official DiT models.py names (timm's fused qkv = [q; k; v] rows)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    emb = "transformer_blocks.0.norm1.emb."
    out = {"pos_embed": model.pos_embed.pos_embed.detach().clone(),   # a non-persistent buffer in diffusers
           "x_embedder.proj.weight": sd.pop("pos_embed.proj.weight"), "x_embedder.proj.bias": sd.pop("pos_embed.proj.bias"),
           "y_embedder.embedding_table.weight": sd.pop(emb + "class_embedder.embedding_table.weight")}
    for w in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{w}"] = sd.pop(f"{emb}timestep_embedder.linear_1.{w}")
        out[f"t_embedder.mlp.2.{w}"] = sd.pop(f"{emb}timestep_embedder.linear_2.{w}")
        out[f"final_layer.adaLN_modulation.1.{w}"] = sd.pop(f"proj_out_1.{w}")
        out[f"final_layer.linear.{w}"] = sd.pop(f"proj_out_2.{w}")
        for i in range(len(model.transformer_blocks)):
            b = f"transformer_blocks.{i}."
            out[f"blocks.{i}.attn.qkv.{w}"] = torch.cat([sd.pop(f"{b}attn1.to_{n}.{w}") for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{w}"] = sd.pop(f"{b}attn1.to_out.0.{w}")
            out[f"blocks.{i}.mlp.fc1.{w}"] = sd.pop(f"{b}ff.net.0.proj.{w}")
            out[f"blocks.{i}.mlp.fc2.{w}"] = sd.pop(f"{b}ff.net.2.{w}")
            out[f"blocks.{i}.adaLN_modulation.1.{w}"] = sd.pop(f"{b}norm1.linear.{w}")
    left = [k for k in sd if ".norm1.emb." not in k]   # only the per-block embedder copies stay unmapped
    assert not left, left
    return out


def ours(cls=DiT, **kwargs) -> DiT:
    base = dict(in_shape=(C, SIZE, SIZE), num_classes=K, patch_size=P, hidden_size=D, depth=DEPTH, num_heads=HEADS)
    return cls(**{**base, **kwargs}).eval()


def save(state: dict, tmp_path, name: str = "DiT-tiny.pt") -> str:
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


X = torch.randn(3, C, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
STEPS = torch.tensor([125, 500, 875])     # DiT's integer step indices in [0, 1000), as diffusers takes them
Y = torch.tensor([0, 7, K])                # K: the null class (CFG), row K of both tables


def run_reference(model: torch.nn.Module, t: torch.Tensor = STEPS, y: torch.Tensor = Y) -> torch.Tensor:
    with torch.no_grad():
        return model(X, timestep=t, class_labels=y, return_dict=False)[0]


def run_ours(model: DiT, t: torch.Tensor, y: torch.Tensor | None = Y) -> torch.Tensor:
    with torch.no_grad():
        return model(X, t, y)


# Our DiT embeds sinusoids of 1000 t for harness t in [0, 1] (dit.py timestep_embedding), DiT those of its
# step index: t = index / 1000.  Multiples of 125 make 1000 * (index / 1000) exact in float32.
T_DIT = STEPS / 1000


def test_dit_import_reproduces_the_official_output(tmp_path):
    ref = reference()
    model = ours(learn_sigma=True)
    record = import_official(model, save(official_state(ref), tmp_path))
    assert record.entry == "state dict" and record.notes == ()
    torch.testing.assert_close(run_ours(model, T_DIT), run_reference(ref), rtol=1e-5, atol=1e-5)
    null = torch.full((3,), K)
    torch.testing.assert_close(run_ours(model, T_DIT, None), run_reference(ref, y=null), rtol=1e-5, atol=1e-5)


def test_the_ema_entry_of_a_training_checkpoint_is_loaded(tmp_path):
    """DiT/SiT train.py save {model, ema, opt, args}; their sample.py loads ``ema``."""
    ref, other = reference(), reference(seed=1)
    blob = {"model": official_state(other), "ema": official_state(ref), "opt": {}, "args": argparse.Namespace(lr=1e-4)}
    model = ours(learn_sigma=True)
    assert import_official(model, save(blob, tmp_path)).entry == "ema"
    torch.testing.assert_close(run_ours(model, T_DIT), run_reference(ref), rtol=1e-5, atol=1e-5)


def test_without_learn_sigma_the_variance_half_is_dropped_with_a_note(tmp_path):
    ref = reference()
    model = ours()
    record = import_official(model, save(official_state(ref), tmp_path))
    assert len(record.notes) == 1 and "variance half was dropped" in record.notes[0]
    torch.testing.assert_close(run_ours(model, T_DIT), run_reference(ref)[:, :C], rtol=1e-5, atol=1e-5)


def test_sit_import_embeds_t_unscaled(tmp_path):
    """SiT's transport calls model(xt, t) with t in [0, 1] and its forward keeps the first C channels."""
    ref, path = reference(), save(official_state(reference()), tmp_path)
    model = ours(SiT, time_scale=1.0)
    import_official(model, path)
    t = torch.tensor([0.125, 0.5, 0.875])
    torch.testing.assert_close(run_ours(model, t), run_reference(ref, t=t)[:, :C], rtol=1e-5, atol=1e-5)
    with pytest.raises(HarnessError, match=r"backbone.time_scale=1000: an official SiT embeds its t in \[0, 1\] unscaled"):
        import_official(ours(SiT), path)


def _swap_halves(tensor: torch.Tensor, size: int, dim: int = 0) -> torch.Tensor:
    a, b, rest = tensor.split([size, size, tensor.shape[dim] - 2 * size], dim=dim)
    return torch.cat([b, a, rest], dim=dim)


PERTURBATIONS = {   # a mapping that is wrong in one detail of the architecture still loads (same shapes) ...
    "block adaLN shift<->scale": lambda s: {k: _swap_halves(v, D) for k, v in s.items() if k.startswith("blocks.0.adaLN")},
    "final adaLN shift<->scale": lambda s: {k: _swap_halves(v, D) for k, v in s.items() if k.startswith("final_layer.adaLN")},
    "time input [sin, cos]": lambda s: {"t_embedder.mlp.0.weight": _swap_halves(s["t_embedder.mlp.0.weight"], 128, 1)},
    "qkv as [k; q; v]": lambda s: {f"blocks.1.attn.qkv.{w}": _swap_halves(s[f"blocks.1.attn.qkv.{w}"], D)
                                   for w in ("weight", "bias")},
}


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_a_perturbed_mapping_does_not_match(tmp_path, name):
    """... and must then not reproduce the reference: the comparison sees each of these details."""
    ref = reference()
    state = official_state(ref)
    state.update(PERTURBATIONS[name](state))
    model = ours(learn_sigma=True)
    import_official(model, save(state, tmp_path))
    assert (run_ours(model, T_DIT) - run_reference(ref)).abs().max() > 1e-2


def test_diffusers_stock_frequencies_are_not_dits(tmp_path):
    """diffusers' DiT embeds t with downscale_freq_shift=1; the test's reference would see that difference."""
    model = ours(learn_sigma=True)
    import_official(model, save(official_state(reference()), tmp_path))
    assert (run_ours(model, T_DIT) - run_reference(reference(official_freqs=False))).abs().max() > 1e-2


def one_line(fn, *needles: str) -> str:
    with pytest.raises(HarnessError) as info:
        fn()
    line = info.value.one_line()
    assert "\n" not in str(info.value) and all(n in line for n in needles), line
    return line


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


BAD_STATES = {   # name: (edit of the official state, what the one line must name)
    "missing key": (lambda s: _without(s, "blocks.1.attn.proj.bias"), ["missing key 'blocks.1.attn.proj.bias'"]),
    "extra key": (lambda s: {**s, "blocks.0.attn.extra.weight": torch.zeros(2)},
                  ["unexpected key 'blocks.0.attn.extra.weight'"]),
    "wrong shape": (lambda s: {**s, "t_embedder.mlp.2.bias": s["t_embedder.mlp.2.bias"][:-1]},
                    ["t_embedder.mlp.2.bias: shape (31,)", "ours (32,)"]),
    "another depth": (lambda s: {k: v for k, v in s.items() if not k.startswith("blocks.1.")},
                      ["backbone.depth=2, the checkpoint's depth is 1"]),
    "pos_embed formula": (lambda s: {**s, "pos_embed": _swap_halves(s["pos_embed"], D // 2, 2)}, ["pos_embed is not"]),
    "no pos_embed": (lambda s: _without(s, "pos_embed"), ["missing key 'pos_embed'"]),
}


@pytest.mark.parametrize("name", list(BAD_STATES))
def test_a_bad_checkpoint_is_one_line_naming_the_key_and_nothing_is_loaded(tmp_path, name):
    edit, needles = BAD_STATES[name]
    path = save(edit(official_state(reference())), tmp_path)
    model = ours(learn_sigma=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_line(lambda: import_official(model, path), "DiT-tiny.pt", *needles)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


OTHER_ARCHITECTURES = {   # diffusers config of the checkpoint, our backbone kwargs, what the line names
    "patch size": (dict(patch_size=4), {}, "backbone.patch_size=2, the checkpoint's patches are 4 wide"),
    "width": (dict(attention_head_dim=24), {}, "backbone.hidden_size=32, the checkpoint is 48 wide"),
    "resolution": (dict(sample_size=16), {}, "the data gives 4x4 tokens (8x8 at patch 2), the checkpoint has 64"),
    "classes": (dict(num_embeds_ada_norm=5), {},
                "the data has 10 classes (+1 null row), the checkpoint's class table has 6 rows"),
    "channels": (dict(in_channels=3, out_channels=6), {}, "the data has 4 channels, the checkpoint takes 3"),
    "no variance": (dict(out_channels=C), {}, "backbone.learn_sigma=true makes 8 output channels, the checkpoint has 4"),
    "our qk_norm": ({}, dict(qk_norm=True), "our blocks.0.attn.q_norm.weight has no counterpart"),
    "our swiglu ffn": ({}, dict(ffn="swiglu"), "our blocks.0.ffn.w12.weight has no counterpart"),
    "mlp width": ({}, dict(mlp_ratio=2.0), "backbone.mlp_ratio gives MLP width 64, the checkpoint's is 128"),
}


@pytest.mark.parametrize("name", list(OTHER_ARCHITECTURES))
def test_another_architecture_is_one_line(tmp_path, name):
    config, kwargs, needle = OTHER_ARCHITECTURES[name]
    path = save(official_state(reference(**config)), tmp_path)
    one_line(lambda: import_official(ours(learn_sigma=True, **kwargs), path), "DiT-tiny.pt", needle)


def test_heads_of_a_named_dit_size_are_checked():
    """Heads are not in the weights; DiT-S (12 blocks, 384 wide) has 6 (DiT models.py DiT_S_*)."""
    with torch.device("meta"):
        model = DiT(in_shape=(4, 32, 32), num_classes=1000, hidden_size=384, depth=12, num_heads=4)
    one_line(lambda: check_architecture(model, {}, "DiT-S-2.pt"), "backbone.num_heads=4", "DiT/SiT-S", "has 6")


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    one_line(lambda: import_official(ours(), str(tmp_path / "nope.pt")), "backbone.init_from", "nope.pt does not exist")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    one_line(lambda: import_official(ours(), str(tmp_path / "notes.pt")), "cannot read", "notes.pt")


# ---------------------------------------------------------------- as a unit: identity, steps=0, describe
def test_init_from_is_identified_by_the_file_bytes(tmp_path):
    from harness.train.units import UnitSpec

    a, b = save(official_state(reference()), tmp_path, "a.pt"), str(tmp_path / "moved.pt")
    shutil.copy(a, b)   # the same bytes elsewhere (torch.save writes the file's name into its archive)
    c = save(official_state(reference(seed=1)), tmp_path, "c.pt")
    def unit(**backbone) -> UnitSpec:
        return UnitSpec("m", {"name": "digits"}, {"name": "dit", **backbone}, {"name": "flow_matching"}, {"steps": 1})

    assert unit(init_from=a).hash == unit(init_from=b).hash != unit(init_from=c).hash
    assert unit(init_from=a).hash != unit().hash == unit(init_from=None).hash
    assert "init_from" not in unit(init_from=a).identity()["backbone"]
    one_line(lambda: unit(init_from=str(tmp_path / "gone.pt")).hash, "backbone.init_from", "gone.pt does not exist")
    one_line(lambda: UnitSpec("m", {}, {"name": "dit"}, {}, {"steps": 0}), "train.steps=0", "backbone.init_from")


def test_a_released_model_is_a_finished_unit_and_describe_says_imported(tmp_path):
    """train.steps=0 with init_from: the imported weights are the unit's checkpoint; describe counts from shapes."""
    from harness.pipeline.assemble import experiment_units, method_for
    from harness.pipeline.describe import describe_experiment
    from harness.train import load_unit_field_parts, train_unit
    from tests.configs import load_in

    ref = reference(in_channels=1, out_channels=2)   # digits: (1, 8, 8), 10 classes
    path = save(official_state(ref), tmp_path)
    cfg = load_in(tmp_path, "data=digits", "backbone=dit_tiny", "backbone.patch_size=2", f"backbone.hidden_size={D}",
                  f"backbone.depth={DEPTH}", f"backbone.num_heads={HEADS}", f"+backbone.init_from={path}",
                  "train.steps=0", "train.device=cpu", "run.progress=false")
    spec = experiment_units(cfg, method_for(cfg, prepare=False))["model"]
    record = train_unit(spec, workdir=tmp_path, progress=False)
    assert record["finished"] and record["step"] == 0 and record["init_from"]["entry"] == "state dict"
    done = json.loads((spec.directory(tmp_path) / "done.json").read_text())
    assert "variance half was dropped" in done["init_from"]["notes"][0]
    model, _, _ = load_unit_field_parts(spec, tmp_path)
    x = X[:, :1]
    with torch.no_grad():
        want = ref(x, timestep=STEPS, class_labels=Y, return_dict=False)[0][:, :1]
        torch.testing.assert_close(model(x, T_DIT, Y), want, rtol=1e-5, atol=1e-5)
    info = describe_experiment(cfg)
    row = info["units"]["model"]
    assert row["steps"] == 0 and row["init_from"]["path"] == path and row["params"] > 0
    assert f"model imported from {path} (state dict; final_layer.linear" in info["note"]
