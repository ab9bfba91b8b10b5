"""Official DiT / SiT checkpoints into our ``dit`` / ``sit`` backbones (``backbone.init_from``).

DiT (facebookresearch/DiT ``models.py``) and SiT (willisma/SiT ``models.py``, the same network
and module names) save ``DiT.state_dict()``: a bare state dict in the released files, or
``{"model", "ema", "opt", "args"}`` from their ``train.py`` (whose ``ema`` is what they sample).
Our :class:`harness.backbones.dit.DiT` is that network under other names, official -> ours:

====================================================  =============================================
``x_embedder.proj.{weight,bias}`` (timm PatchEmbed)   ``x_embedder.{weight,bias}`` (the same Conv2d)
``t_embedder.mlp.{0,2}.{weight,bias}``                ``t_embedder.mlp.{0,2}.{weight,bias}``
``y_embedder.embedding_table.weight`` (K+1 rows)      ``label_embed.table.weight`` (row K: null class)
``pos_embed`` (fixed sin-cos, a frozen parameter)     not loaded: our buffer, checked equal
``blocks.i.attn.{qkv,proj}.*`` (timm Attention)       ``blocks.i.attn.{qkv,proj}.*``
``blocks.i.mlp.{fc1,fc2}.*`` (timm Mlp, tanh GELU)    ``blocks.i.ffn.{fc1,fc2}.*`` (``ffn: dense``)
``blocks.i.adaLN_modulation.1.*``                     ``blocks.i.adaLN_modulation.1.*``
``final_layer.{linear,adaLN_modulation.1}.*``         ``final_layer.{linear,adaLN_modulation.1}.*``
====================================================  =============================================

The norms have no weights on either side; the adaLN chunk order (shift, scale, gate for
attention, then for the MLP; final layer shift, scale), the ``[cos, sin]`` 256-sinusoid time
input with max period 10^4 and the MAE 2-D sin-cos position embedding are DiT's
(``tests/test_dit_import.py`` checks the outputs against diffusers' DiT and that a swapped
chunk is caught).  Time: DiT embeds its step index in [0, 1000), i.e. harness t with the
default ``time_scale: 1000``; SiT embeds its t in [0, 1] unscaled, so a ``sit`` import needs
``time_scale: 1`` (the weights cannot tell the two apart; the backbone's name says which it is).
``learn_sigma=True`` checkpoints (DiT-XL/2: 8 = 4 + 4 output channels) load in full into
``learn_sigma: true``; into ``learn_sigma: false`` their variance half is dropped with a note,
which is exactly SiT's forward (``x, _ = x.chunk(2, dim=1)``) and DiT's epsilon.

Strict: the architecture read off the shapes (patch, width, depth, MLP width, channels, token
grid, classes, output channels, and the heads of the named DiT sizes) is compared first, then
every key both ways and every shape; each failure is one line naming the key and the file,
before any weight is copied.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Mapping, NoReturn

import torch
from torch import nn

from harness.backbones.dit import DiT, SiT
from harness.core.errors import CheckpointError, ConfigError

# ours (a full match over our state-dict keys) -> official name; a key of ours matching none
# has no official counterpart (qk_norm, bottleneck_dim, MoE FFNs, learnable token selectors)
KEY_MAP = (
    (r"x_embedder\.(weight|bias)", r"x_embedder.proj.\1"),
    (r"t_embedder\.mlp\.([02])\.(weight|bias)", r"t_embedder.mlp.\1.\2"),
    (r"label_embed\.table\.weight", "y_embedder.embedding_table.weight"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.ffn\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.adaLN_modulation.1.\2"),
    (r"final_layer\.(linear|adaLN_modulation\.1)\.(weight|bias)", r"final_layer.\1.\2"),
)
FIXED = "pos_embed"   # official frozen parameter we recompute (DiT ``initialize_weights``)
# num_heads is not in the weights (qkv is D x 3D for any head count): the named sizes of DiT/SiT models.py
OFFICIAL_HEADS = {(12, 384): ("S", 6), (12, 768): ("B", 12), (24, 1024): ("L", 16), (28, 1152): ("XL", 16)}
TIME_SCALES = {"dit": 1000.0, "sit": 1.0}   # DiT: step index t in [0, 1000); SiT: t in [0, 1] (transport.py)


@dataclasses.dataclass(frozen=True)
class Imported:
    """Where imported weights came from: the file, the entry read, and what the import changed."""

    path: str
    entry: str                 # "ema", "model" or "state dict" (a bare one, as released)
    notes: tuple[str, ...]     # e.g. the variance half dropped

    def to_dict(self) -> dict:
        return {"path": self.path, "entry": self.entry, "notes": list(self.notes)}


def official_name(ours: str) -> str | None:
    """The official DiT/SiT key our state-dict key ``ours`` is loaded from, or None (no counterpart)."""
    for pattern, template in KEY_MAP:
        match = re.fullmatch(pattern, ours)
        if match:
            return match.expand(template)
    return None


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, entry) of a DiT/SiT checkpoint: its ``ema`` when present, else ``model``, else the bare dict.

    Memory-mapped, so reading shapes (``harness describe``) costs no weight in memory; ``args``
    (an ``argparse.Namespace`` in DiT/SiT ``train.py`` checkpoints) is the one non-tensor allowed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"backbone.init_from: {path} does not exist", hint="point it at an official DiT/SiT .pt file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch's unpickling errors are paragraphs: keep the first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"backbone.init_from: cannot read {path}: {first}") from None
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"backbone.init_from: {path} holds a {type(blob).__name__}, not a state dict")
    for entry in ("ema", "model"):
        if isinstance(blob.get(entry), Mapping):
            return dict(blob[entry]), entry
    return dict(blob), "state dict"


def _facts(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """What the official shapes say about the network (DiT ``models.py`` ``DiT.__init__``); absent keys say nothing."""
    facts: dict[str, int] = {}
    proj = state.get("x_embedder.proj.weight")
    if proj is not None and proj.dim() == 4:
        facts.update(hidden_size=proj.shape[0], channels=proj.shape[1], patch_size=proj.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state if re.match(r"blocks\.\d+\.", k)}
    if blocks:
        facts["depth"] = max(blocks) + 1
    for key, name, dim in (("pos_embed", "tokens", 1), ("y_embedder.embedding_table.weight", "table_rows", 0),
                           ("blocks.0.mlp.fc1.weight", "mlp_hidden", 0), ("final_layer.linear.weight", "out_rows", 0)):
        if key in state and state[key].dim() > dim:
            facts[name] = state[key].shape[dim]
    return facts


def _fail(path: str, message: str) -> NoReturn:
    raise CheckpointError(f"backbone.init_from={path}: {message}")


def check_architecture(model: DiT, state: Mapping[str, torch.Tensor], path: str) -> list[str]:
    """Compare the checkpoint's architecture with ``model`` (one line at the first difference); returns notes."""
    f = _facts(state)
    (C, H, W), p, D, K = model.in_shape, model.patch_size, model.hidden_size, model.num_classes
    ffn = model.blocks[0].ffn
    mlp = [("mlp_hidden", ffn.fc1.out_features,   # a non-dense ffn has no fc1: the key check names it
            f"backbone.mlp_ratio gives MLP width {ffn.fc1.out_features}, the checkpoint's is {{}} (blocks.0.mlp.fc1.weight)")
           ] if hasattr(ffn, "fc1") else []
    classes = f"{K} classes (+1 null row)" if model.label_embed is not None else "no classes (unconditional)"
    checks = [
        ("patch_size", p, f"backbone.patch_size={p}, the checkpoint's patches are {{}} wide (x_embedder.proj.weight)"),
        ("hidden_size", D, f"backbone.hidden_size={D}, the checkpoint is {{}} wide (x_embedder.proj.weight)"),
        ("depth", model.depth, f"backbone.depth={model.depth}, the checkpoint's depth is {{}} (blocks.N.*)"),
        *mlp,
        ("channels", C, f"the data has {C} channels, the checkpoint takes {{}} (x_embedder.proj.weight)"),
        ("tokens", model.num_tokens, f"the data gives {model.grid[0]}x{model.grid[1]} tokens ({H}x{W} at patch {p}), "
                                     "the checkpoint has {} (pos_embed: another resolution)"),
        ("table_rows", K + 1 if model.label_embed is not None else None,
         f"the data has {classes}, the checkpoint's class table has {{}} rows (y_embedder.embedding_table.weight)"),
    ]
    for name, ours, message in checks:
        if name in f and f[name] != ours:
            _fail(path, message.format(f[name]))
    notes = _check_output(model, f, path)
    _check_heads(model, path)
    _check_time_scale(model, path)
    return notes


def _check_output(model: DiT, f: Mapping[str, int], path: str) -> list[str]:
    """DiT's ``learn_sigma`` doubles ``final_layer.linear``; ours keeps the variance half only with ``learn_sigma``."""
    if "out_rows" not in f:
        return []
    C, p = model.in_shape[0], model.patch_size
    theirs = f["out_rows"] / (p * p)
    if theirs == model.out_channels:
        return []
    if theirs == 2 * C and not model.learn_sigma:
        return [f"final_layer.linear: the checkpoint's {2 * C} output channels are {C} predicted + {C} variance "
                f"(learn_sigma); the variance half was dropped (backbone.learn_sigma=true keeps it)"]
    _fail(path, f"backbone.learn_sigma={str(model.learn_sigma).lower()} makes {model.out_channels} output channels, "
                f"the checkpoint has {theirs:g} (final_layer.linear.weight)")


def _check_heads(model: DiT, path: str) -> None:
    named = OFFICIAL_HEADS.get((model.depth, model.hidden_size))
    heads = model.blocks[0].attn.num_heads
    if named is not None and heads != named[1]:
        _fail(path, f"backbone.num_heads={heads}, DiT/SiT-{named[0]} ({model.depth} blocks, {model.hidden_size} wide) "
                    f"has {named[1]} (DiT models.py DiT_{named[0]}_*; heads are not in the weights)")


def _check_time_scale(model: DiT, path: str) -> None:
    """The weights cannot tell DiT from SiT, whose time inputs differ 1000-fold: the backbone's name says which."""
    name = "sit" if isinstance(model, SiT) else "dit"
    want, scale = TIME_SCALES[name], model.t_embedder.scale
    if scale != want:
        why = {"sit": "an official SiT embeds its t in [0, 1] unscaled (SiT transport.py calls model(xt, t))",
               "dit": "an official DiT embeds its step index in [0, 1000), i.e. 1000 t"}[name]
        other = {"sit": "DiT weights: name the backbone dit", "dit": "SiT weights: name the backbone sit"}[name]
        _fail(path, f"backbone.time_scale={scale:g}: {why}; set backbone.time_scale={want:g} ({other}, the same network)")


def mapped_state(model: DiT, state: Mapping[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Our state dict from the official one: every key both ways and every shape, one line at the first failure."""
    ours = model.state_dict()
    out, used = {}, {FIXED}
    if FIXED not in state:
        _fail(path, f"missing key {FIXED!r} (every official DiT/SiT state dict has it)")
    for key, target in ours.items():
        name = official_name(key)
        if name is None:
            _fail(path, f"our {key} has no counterpart in the official DiT/SiT layout "
                        "(a backbone option official DiT lacks: qk_norm, bottleneck_dim, a non-dense ffn, "
                        "a learnable token selector)")
        if name not in state:
            _fail(path, f"missing key {name!r}" + (f" (for our {key})" if name != key else ""))
        tensor = _drop_variance(model, name, state[name])
        if tuple(tensor.shape) != tuple(target.shape):
            _fail(path, f"{name}: shape {tuple(state[name].shape)} in the checkpoint, ours {tuple(target.shape)}")
        out[key] = tensor
        used.add(name)
    extra = sorted(set(state) - used)
    if extra:
        _fail(path, f"unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return out


def _drop_variance(model: DiT, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Rows of ``final_layer.linear`` for the first C channels when a learn_sigma checkpoint meets ``learn_sigma: false``.

    Its rows are (p, q, c) with c fastest (DiT ``unpatchify``: reshape (h, w, p, p, c)).
    """
    C, p = model.in_shape[0], model.patch_size
    if not name.startswith("final_layer.linear.") or model.learn_sigma or tensor.shape[0] != p * p * 2 * C:
        return tensor
    return tensor.reshape(p * p, 2 * C, *tensor.shape[1:])[:, :C].reshape(p * p * C, *tensor.shape[1:])


def _check_pos_embed(model: DiT, state: Mapping[str, torch.Tensor], path: str) -> None:
    """The checkpoint's frozen ``pos_embed`` must be our 2-D sin-cos embedding (DiT ``get_2d_sincos_pos_embed``)."""
    theirs = state[FIXED].float().reshape(model.pos_embed.shape)
    diff = (theirs - model.pos_embed.float()).abs().max().item()
    if diff > 1e-5:
        _fail(path, f"pos_embed is not the fixed 2-D sin-cos embedding of our DiT (max |difference| {diff:.3g})")


def _prepare(model: nn.Module, path: str | Path) -> tuple[Imported, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(record, official state, our state dict): architecture first, then keys and shapes."""
    if not isinstance(model, DiT):
        raise ConfigError(f"backbone.init_from: only the dit and sit backbones import DiT/SiT weights, "
                          f"not {type(model).__name__}")
    if model.conditioning != "adaln_zero" or model.text_dim is not None:
        raise ConfigError(f"backbone.init_from: official DiT/SiT weights load strictly into an adaLN-Zero class model; "
                          f"this one has conditioning={model.conditioning}, text_dim={model.text_dim}",
                          hint="seed 003's transfer into AdaLN-Single/text experts (Sec. 2.6) is not implemented; "
                               "unset backbone.init_from")
    state, entry = read_official(path)
    notes = check_architecture(model, state, str(path))
    return Imported(str(path), entry, tuple(notes)), state, mapped_state(model, state, str(path))


def check_official(model: nn.Module, path: str | Path) -> Imported:
    """Check that ``model`` (our ``dit``/``sit``, on any device, meta included) can load ``path``; copies nothing."""
    return _prepare(model, path)[0]


def import_official(model: nn.Module, path: str | Path) -> Imported:
    """Load an official DiT/SiT checkpoint into ``model`` (strict; every check before any weight is copied)."""
    imported, state, mapped = _prepare(model, path)
    _check_pos_embed(model, state, str(path))
    model.load_state_dict(mapped)
    return imported
