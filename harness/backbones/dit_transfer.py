"""Seed 003's checkpoint initialisation (Sec. 2.6, Eq. 20): a DDPM-eps DiT into a new expert.

``backbone.init_transfer: eq20`` changes how ``backbone.init_from`` is read.  Instead of the strict,
complete import of :mod:`harness.backbones.dit_import`, the expert takes from the DDPM checkpoint

* transferred: the patch embedding (``x_embedder``), the position embedding (a fixed sin-cos buffer on
  both sides: checked equal for official files, recomputed for ours), every block, and the timestep MLP
  (``t_embedder``: Eq. 20 does not list it, but Eq. 21 exists "to preserve the learned timestep
  embedding MLP", so it is kept);
* re-initialised N(0, 0.02) (biases zero): the final layer (``final_layer.linear`` and its adaLN
  modulation; Eq. 20's "final_layer") and the text projection of a text-conditioned expert (our
  ``y_embedder.proj``, the caption MLP: Eq. 20's ``text_proj``);
* new, with the backbone's own initialisation (Sec. 2.5), in an AdaLN-Single text expert (seed 003's
  experts are exactly that: DiT-XL/2 with PixArt-alpha's AdaLN-Single and cross-attention): the global
  modulation MLP ``t_block`` (final projection zero), the per-block embeddings E_b (``scale_shift_table``,
  N(0, 1/sqrt(d))), the cross-attention of every block (output projection zero) and the learned null
  caption.  A source block's per-block adaLN MLP (``adaLN_modulation``) has no place in AdaLN-Single and is
  dropped; the rest of every block (attention, FFN) is transferred;
* dropped: the class embedding (``label_embed`` / ``y_embedder``: the expert's own table, if it has
  classes, keeps its fresh N(0, 0.02) init) and, with the final layer, DiT's learned-sigma channels.

The source is ours (a harness unit checkpoint, ``ckpt_*.pt``: its EMA when kept, else its weights) or an
official DiT/SiT file (read through :data:`harness.backbones.dit_import.KEY_MAP`).  Either way every
check runs before any weight is copied, and each failure is one line: no transferable block, a different
hidden size (the key and both shapes), any other shape.  The report (:class:`Transferred`) goes into the
unit's ``done.json`` and ``harness describe``.

At init the expert is therefore *not* the source's velocity: the final layer that reads the eps out of
the trunk is new (the seed's construction, not an exact conversion).  What is exact is the trunk: with
``backbone.time_map: eq21`` a flow-matching expert at harness t computes the source's features at DDPM step
round(999 (1 - t)) (``tests/test_dit_transfer.py``).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from harness.backbones.dit import DiT
from harness.backbones.dit_import import FIXED, official_name, read_official
from harness.core.errors import CheckpointError, ConfigError

MODES = ("eq20",)
REINIT_STD = 0.02   # seed 003 Eq. 20: N(0, 0.02)
# our key prefixes -> Eq. 20's row; keys of the expert matching none are an error (an option the source lacks)
TRANSFER = (r"x_embedder\..*", r"t_embedder\..*", r"blocks\.\d+\..*")
REINIT = (r"final_layer\..*", r"text_proj\..*", r"y_embedder\.proj\..*")
# an AdaLN-Single / text expert's modules that a class-conditional DDPM DiT does not have: the backbone's own init
NEW = (r"t_block\..*", r"blocks\.\d+\.scale_shift_table", r"blocks\.\d+\.cross_attn\..*", r"y_embedder\.null")
OWN = (r"label_embed\..*",)   # the expert's own class table: not the source's (Eq. 20: class_embed -> empty set)
SOURCE_DROPPED = (r"(label_embed|y_embedder)\..*",)


@dataclasses.dataclass(frozen=True)
class Transferred:
    """What an Eq. 20 initialisation took, re-initialised and dropped, and from where."""

    path: str
    entry: str                          # "ema", "model" or "state dict"
    layout: str                         # "harness" (our keys) or "official" (DiT/SiT models.py keys)
    transferred: tuple[str, ...]        # groups, e.g. "blocks 0-11 (72 tensors)"
    reinitialised: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"path": self.path, "entry": self.entry, "mode": "eq20", "layout": self.layout,
                "transferred": list(self.transferred), "reinitialised": list(self.reinitialised),
                "dropped": list(self.dropped)}

    def line(self) -> str:
        return (f"Eq. 20 from {self.path} ({self.layout}, {self.entry}): transferred {', '.join(self.transferred)}; "
                f"re-initialised {', '.join(self.reinitialised) or 'nothing'}; dropped {', '.join(self.dropped) or 'nothing'}")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def _fail(path: str, message: str) -> None:
    raise CheckpointError(f"backbone.init_from={path} (init_transfer=eq20): {message}")


def _layout(state: Mapping[str, torch.Tensor]) -> str:
    return "official" if any(k.startswith("x_embedder.proj.") or k.startswith("y_embedder.") for k in state) else "harness"


def _source_name(key: str, layout: str) -> str | None:
    return key if layout == "harness" else official_name(key)


def _group(keys: list[str]) -> list[str]:
    """Compact names for the report: blocks as a range, other modules by prefix."""
    blocks = sorted({int(k.split(".")[1]) for k in keys if k.startswith("blocks.")})
    out = [f"{p} ({sum(k.startswith(p + '.') for k in keys)} tensors)"
           for p in dict.fromkeys(k.split(".")[0] for k in keys if not k.startswith("blocks."))]
    if blocks:
        out.append(f"blocks {blocks[0]}-{blocks[-1]} ({sum(k.startswith('blocks.') for k in keys)} tensors)")
    return out


def plan(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, entry: str) -> tuple[Transferred, dict[str, torch.Tensor]]:
    """(report, {our key: source tensor}) for ``model`` from ``state``; every check, nothing copied."""
    if not isinstance(model, DiT):
        raise ConfigError(f"backbone.init_transfer=eq20: only the dit and sit backbones take DiT weights, not {type(model).__name__}")
    layout = _layout(state)
    ours = model.state_dict()
    reinit = [k for k in ours if _matches(k, REINIT)]
    new = [k for k in ours if _matches(k, NEW) and k not in reinit and _source_name(k, layout) not in state]
    transfer = [k for k in ours if _matches(k, TRANSFER) and k not in reinit and k not in new]
    other = [k for k in ours if k not in transfer and k not in reinit and k not in new and not _matches(k, OWN)]
    if other:
        _fail(path, f"our {other[0]} is none of Eq. 20's rows (patch/pos embedding, blocks, final layer, "
                    "class embedding): a backbone option a DiT checkpoint lacks")
    src_blocks = {int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if not src_blocks:
        _fail(path, f"no transformer block (blocks.N.*) among its {len(state)} tensors: nothing to transfer "
                    "(is it a DiT/SiT checkpoint?)")
    width_key = _source_name("x_embedder.weight", layout)
    if width_key in state and isinstance(model.x_embedder, nn.Conv2d):
        theirs, want = tuple(state[width_key].shape), tuple(ours["x_embedder.weight"].shape)
        if theirs[0] != want[0]:
            _fail(path, f"hidden size differs: {width_key} has shape {theirs} in the checkpoint, ours {want} "
                        f"(backbone.hidden_size={model.hidden_size})")
    if max(src_blocks) + 1 != model.depth:
        _fail(path, f"the checkpoint has {max(src_blocks) + 1} blocks (blocks.N.*), backbone.depth={model.depth}: "
                    "Eq. 20 transfers all of them")
    mapped = {}
    for key in transfer:
        name = _source_name(key, layout)
        if name is None or name not in state:
            _fail(path, f"missing key {name or key!r} (for our {key})")
        if tuple(state[name].shape) != tuple(ours[key].shape):
            _fail(path, f"{name}: shape {tuple(state[name].shape)} in the checkpoint, ours {tuple(ours[key].shape)}")
        mapped[key] = state[name]
    if FIXED in state and not model.pos_embed.is_meta:   # official frozen sin-cos parameter: ours is recomputed
        theirs = state[FIXED].float().reshape(model.pos_embed.shape) if state[FIXED].numel() == model.pos_embed.numel() else None
        if theirs is None or (theirs - model.pos_embed.float().cpu()).abs().max().item() > 1e-5:
            _fail(path, "pos_embed is not our fixed 2-D sin-cos embedding for this token grid")
    used = {_source_name(k, layout) for k in transfer} | {FIXED}
    per_block_adaln = [k for k in state if k not in used and re.match(r"blocks\.\d+\.adaLN_modulation\.", k)]
    dropped = sorted({k.split(".")[0] for k in state if k not in used and k not in per_block_adaln})
    notes = []
    if per_block_adaln:
        notes.append(f"per-block adaLN MLPs ({len(per_block_adaln)} tensors; replaced by AdaLN-Single)")
    head = _source_name("final_layer.linear.weight", layout)
    if head in state and state[head].shape[0] == 2 * ours["final_layer.linear.weight"].shape[0]:
        notes.append("learned-sigma channels (with final_layer)")
    record = Transferred(path=path, entry=entry, layout=layout,
                         transferred=tuple(["pos_embed (fixed sin-cos)"] + _group(transfer)),
                         reinitialised=tuple([*(f"{g} N(0, {REINIT_STD})" for g in _group(reinit)),
                                              *(f"{g} new (the backbone's init, Sec. 2.5)" for g in _group(new))]),
                         dropped=tuple([*(f"source {d}" for d in dropped), *notes]))
    return record, mapped


def reinitialise(model: DiT, generator: torch.Generator | None = None) -> None:
    """Eq. 20's N(0, 0.02) rows: every weight of the final layer (and a text projection), biases zero."""
    for name, module in model.named_modules():
        if _matches(name + ".weight", REINIT) and isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.normal_(0.0, REINIT_STD, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()


def check_transfer(model: nn.Module, path: str | Path) -> Transferred:
    """The report of an Eq. 20 initialisation of ``model`` from ``path`` (shapes only, meta models fine)."""
    state, entry = read_official(path)
    return plan(model, state, str(path), entry)[0]


def transfer_ddpm(model: nn.Module, path: str | Path) -> Transferred:
    """Initialise ``model`` from the DDPM DiT checkpoint ``path`` by Eq. 20 (checks first, then copies)."""
    state, entry = read_official(path)
    record, mapped = plan(model, state, str(path), entry)
    with torch.no_grad():
        own = model.state_dict()
        for key, tensor in mapped.items():
            own[key].copy_(tensor)
    reinitialise(model)
    return record


def check_mode(mode: str | None) -> None:
    """``backbone.init_transfer`` names a known mode (one line otherwise)."""
    if mode is not None and mode not in MODES:
        raise ConfigError(f"backbone.init_transfer: {mode!r} is not one of {', '.join(MODES)}",
                          hint="eq20 = seed 003 Sec. 2.6's DDPM -> new-expert transfer; leave it unset for a strict import")
