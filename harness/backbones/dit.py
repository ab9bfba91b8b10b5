"""DiT / SiT / JiT: the transformer backbones of seeds 000, 002 and 004.

DiT (Peebles & Xie 2023) and SiT (Ma et al. 2024) share one architecture; SiT only trains
it with the interpolant (flow) objective, so ``sit`` is the same network under another
name (seed 000 uses SiT-S/B/XL, seed 002 DiT/SiT with MoE FFNs, seed 004 SiT-XL/2).  JiT
(Li & He 2025; seed 000 Tab. 2 uses JiT-B/4 on ImageNet-64) is a DiT over raw pixels with
large patches and a bottleneck patch embedding; how its output is read (x-prediction) is
the objective's business, not the backbone's.

Two extension points, both through the registry so later methods never edit this file:

* ``ffn`` / ``ffn_kwargs`` / ``ffn_every`` / ``ffn_layers``: which FFN (``harness.backbones.ffn``)
  the chosen blocks use; the others keep the dense FFN (DiffMoE: MoE in every other block).
* ``token_selector`` / ``token_selector_kwargs`` / ``select_blocks``: token routing or
  masking around a block range (``harness.backbones.token_selection``, seed 004); a masking
  selector may ask for MaskDiT's separate decoder (:class:`MaskDecoder`), built here.

Conventions (harness-wide): ``forward(x, t, y=None)``, ``t`` in [0, 1] embedded as
sinusoids of ``1000 t`` (DiT's timestep scale), ``y = None`` -> the null class
``num_classes`` (CFG).  The null class is always in the table; label dropout is the
trainer's job.

Conditioning (``conditioning``, seed 003 Sec. 2.5): ``adaln_zero`` (default, DiT's per-block
adaLN MLPs, unchanged) or ``adaln_single`` (PixArt-alpha, Eq. 14-16: one global SiLU + Linear(D, 6D)
of the t(+class) embedding shared by all blocks, plus a learned E_b (6, D) per block, and PixArt's
final layer, a learned (2, D) table + the t embedding; :mod:`harness.backbones.conditioning`).
Text (``text_dim``, ``text_len``): caption embeddings (B, L, text_dim) passed as ``y``, projected to D
and read by a cross-attention between self-attention and FFN in every block (Eq. 18); a dropped or
absent caption is the learned null caption (CFG).  A text model has no class table.

Parameter counts of text-conditioned DiT-XL/2 (1152 wide, 28 blocks, 256 tokens, CLIP-ViT-L/14
text 77 x 768; ``conf/backbone/dit_xl2_text.yaml``), counted on the meta device by
:func:`harness.backbones.size.describe`, the counter of ``harness describe`` (``tests/test_adaln_single.py``
recomputes the figures printed here and in that config):
adaLN-Zero 824.70M -> AdaLN-Single 607.06M (-26.4 %), beside seed 003's "891M -> 605M" (-30 %).
The after-figure agrees to 0.4 %: ours less the caption projection (2.21M) is 604.85M, so the
seed's 605M is likely counted without it.  The before-figure we do not reproduce: 891M is
66M above our adaLN-Zero text twin, and no text width explains it (T5's 4096 x 120 captions,
PixArt's own choice, give 828.97M -> 611.33M; PixArt-alpha's paper, as we recall it and have not
re-checked here, reports 833M -> 611M for that layout).  Our cross-attention is PixArt's (q, kv, proj Linear of width D in every block,
ungated, after the LN of Eq. 18); a layout with its own adaLN or gate per block would explain
part of the gap, but the seed does not describe one.  Eq. 14 as printed (an MLP to 6LD) would
save nothing -- it has as many weights as adaLN-Zero's per-block MLPs -- so we follow PixArt's
shared 6D output (see :mod:`harness.backbones.conditioning`).

Three keys exist for released DiT/SiT weights (``backbone.init_from``,
:mod:`harness.backbones.dit_import`) and change nothing at their defaults: ``learn_sigma``
(DiT's extra variance channels), ``time_scale`` (SiT embeds t unscaled) and ``init_from``;
two more for seed 003's DDPM -> FM initialisation (:mod:`harness.backbones.dit_transfer`):
``init_transfer`` and ``time_map`` (Eq. 21's step index for flow-matching experts).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F

from harness.backbones.conditioning import (CONDITIONINGS, CaptionEmbedder, CrossAttention, GlobalModulation,
                                            SingleFinalLayer, per_block_embedding)
from harness.backbones.block_drop import dropped_blocks
from harness.backbones.ffn import aux_loss, build_ffn
from harness.backbones.token_selection import DecoderSpec, build_token_selector
from harness.core.errors import ConfigError
from harness.core.registry import get, register


# ---------------------------------------------------------------- embeddings (shared)
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoids of ``scale * t`` (B,) -> (B, dim), ``[cos, sin]`` halves as DiT/ADM.

    ``scale`` 1000: DiT's diffusion-step index for harness t in [0, 1]; SiT's released networks
    embed their t in [0, 1] unscaled (SiT ``transport.py`` calls ``model(xt, t)``): ``scale`` 1.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]                        # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): 256 sinusoids through a two-layer SiLU MLP (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        scale = self.scale if scale is None else scale   # 1: t is already a step index (``time_map``)
        return self.mlp(timestep_embedding(t, self.freq_dim, scale=scale).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (B,) or None -> (B, D); row ``num_classes`` of the table is the null class (CFG)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE/DiT): (grid_h * grid_w, dim), row-major."""
    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega[None]                    # (P, d/2)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    # DiT's first half encodes the column (w) coordinate, the second half the row (h).
    return torch.cat([one_d(dim // 2, xs), one_d(dim // 2, ys)], dim=1).float()


# ---------------------------------------------------------------- blocks
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: (B, S, D) * (1 + scale) + shift, scale/shift (B, 1, D)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention (timm ``Attention``: fused qkv with bias), optional qk-norm (JiT)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        head_dim = dim // num_heads
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        qkv = self.qkv(x).reshape(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]        # (B, H, S, D/H)
        out = F.scaled_dot_product_attention(q, k, v)                      # (B, H, S, D/H)
        return self.proj(out.transpose(1, 2).reshape(B, S, D))


class DiTBlock(nn.Module):
    """adaLN-Zero block (DiT Fig. 3): attention and FFN, each modulated and gated by c.

    ``cond_dim``: the width of c when it differs from the tokens' (MaskDiT's decoder blocks read
    the encoder's c, ``models/maskdit.py`` l. 320); None = ``dim``.
    ``conditioning="adaln_single"`` (seed 003 Eq. 16): no per-block MLP; c is the global
    modulation (B, 6, D) and the block adds its learned E_b (``scale_shift_table``, PixArt's name).
    ``cross_attn`` (Eq. 18): attention to ``ctx["text"]`` (B, L, D) between self-attention and
    FFN, on LN(h) without affine parameters, ungated (its zero-initialised output projection
    plays the gate's part at init).
    """

    def __init__(self, dim: int, num_heads: int, ffn: nn.Module, qk_norm: bool = False,
                 cond_dim: int | None = None, conditioning: str = "adaln_zero",
                 cross_attn: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = ffn
        if conditioning == "adaln_single":
            self.scale_shift_table = per_block_embedding(dim)                # E_b (6, D)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 6 * dim))
        if cross_attn is not None:
            self.norm_cross = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.cross_attn = cross_attn

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six (B, 1, D) vectors [shift1, scale1, gate1, shift2, scale2, gate2] of this block."""
        if hasattr(self, "scale_shift_table"):                             # Eq. 16: C_b + E_b
            return (c + self.scale_shift_table[None].to(c.dtype)).chunk(6, dim=1)
        return self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """x (B, S, D), c (B, D) (adaLN-Zero) or (B, 6, D) (AdaLN-Single) -> ((B, S, D), aux of the FFN)."""
        sh1, sc1, g1, sh2, sc2, g2 = self.modulation(c)                    # (B, 1, D) each
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1))           # Eq. 17
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(self.norm_cross(x), ctx["text"])        # Eq. 18
        h, aux = self.ffn(modulate(self.norm2(x), sh2, sc2), ctx)          # Eq. 19
        return x + g2 * h, aux


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + Linear to ``out_dim`` per token.

    DiT's final layer (``out_dim`` = p*p*C) and MaskDiT's ``DecoderLayer`` (encoder width to
    decoder width, ``models/maskdit.py`` l. 195-213) are this one layer; ``cond_dim`` as in
    :class:`DiTBlock`.
    """

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))           # (B, S, out_dim)


class MaskDecoder(nn.Module):
    """MaskDiT's decoder (Zheng et al. 2023, ``models/maskdit.py`` l. 309-331 and 536-548).

    ``embed`` projects the encoder's output (the kept tokens only) to the decoder width; the
    masking selector's ``restore`` then fills the masked positions with ``e_mask`` and adds the
    decoder position embedding to every token; ``blocks`` (dense DiT blocks conditioned on the
    encoder's c) run on the full sequence, and the backbone's final layer reads their width.
    """

    def __init__(self, spec: DecoderSpec, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.embed = FinalLayer(dim, spec.dim)
        self.blocks = nn.ModuleList(
            DiTBlock(spec.dim, spec.num_heads or num_heads, build_ffn("dense", spec.dim, mlp_ratio, None), qk_norm,
                     cond_dim=dim)
            for _ in range(spec.depth))

    def init_weights(self) -> None:
        """Zero the blocks' adaLN and the projection, as MaskDiT does (``models/maskdit.py`` l. 397-408)."""
        for lin in [b.adaLN_modulation[-1] for b in self.blocks] + [self.embed.adaLN_modulation[-1], self.embed.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"backbone.{key}: {message}")


# ---------------------------------------------------------------- the backbone
@register("backbone", "dit")
class DiT(nn.Module):
    supports_block_drop = True      # reads harness.backbones.block_drop (S^2-Guidance's sub-network)
    """Diffusion Transformer with adaLN-Zero (DiT); sizes S/B/L/XL live in ``conf/backbone``.

    ``bottleneck_dim`` (JiT) factors the patch embedding into p*p*C -> bottleneck -> D.
    ``learn_sigma`` doubles the output channels as DiT's ``learn_sigma=True`` (DiT ``models.py``:
    C epsilon channels, then C variance-interpolation channels for its DDPM sampler), so
    imported DiT weights give DiT's full output.
    After each forward ``last_aux_loss`` holds the sum of the FFNs' ``aux["loss"]`` (0 for
    dense FFNs), for the trainer to add to the objective.  A masking selector that asks for
    MaskDiT's decoder gets ``mask_decoder`` after the last block, and ``final_layer`` reads its width.
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
                 patch_size: int = 2,                  # pixels (or latent cells) per patch side
                 hidden_size: int = 384,               # token width D
                 depth: int = 12,                      # number of DiT blocks
                 num_heads: int = 6,                   # attention heads; must divide hidden_size
                 mlp_ratio: float = 4.0,               # dense FFN hidden width / D
                 qk_norm: bool = False,                # LayerNorm on q and k per head (JiT)
                 bottleneck_dim: int | None = None,    # JiT bottleneck patch embedding width; None = DiT conv
                 ffn: str = "dense",                   # registered FFN for the chosen blocks
                 ffn_kwargs: dict[str, Any] | None = None,
                 ffn_every: int = 1,                   # blocks i with i % ffn_every == ffn_every - 1 get `ffn`
                 ffn_layers: tuple[int, ...] | None = None,  # explicit block indices (overrides ffn_every)
                 token_selector: str | None = None,    # registered selector; None = dense
                 token_selector_kwargs: dict[str, Any] | None = None,
                 select_blocks: tuple[int, ...] | None = None,  # [start, end); None = [2, depth-2) (TREAD),
                                                                # [0, depth) with MaskDiT's decoder
                 checkpointing: bool = False,          # recompute each block's activations in backward (memory)
                 learn_sigma: bool = False,            # 2C output channels: C predicted + C variance (DiT)
                 time_scale: float = 1000.0,           # t is embedded as sinusoids of time_scale * t (SiT's release: 1)
                 init_from: str | None = None,         # official DiT/SiT checkpoint; the trainer loads it after
                                                       # construction (harness.backbones.dit_import), never read here
                 conditioning: str = "adaln_zero",     # adaln_zero (DiT) | adaln_single (PixArt-alpha, seed 003 Eq. 14-16)
                 text_dim: int | None = None,          # caption-embedding width (CLIP-ViT-L/14: 768); None = no text
                 text_len: int = 77,                   # caption tokens L (CLIP: 77); used with text_dim
                 init_transfer: str | None = None,     # how init_from is read: None strict, eq20 (dit_transfer); not read here
                 time_map: str | None = None,          # registered time_map: t -> step index, embedded unscaled (Eq. 21)
                 ) -> None:
        super().__init__()
        self.time_map = get("time_map", time_map) if time_map is not None else None
        self.checkpointing = bool(checkpointing)
        _check(len(in_shape) == 3, "name", f"transformers need (C, H, W) data, got in_shape={tuple(in_shape)}")
        C, H, W = (int(s) for s in in_shape)
        _check(patch_size > 0 and H % patch_size == 0 and W % patch_size == 0, "patch_size",
               f"{patch_size} does not divide the image size {H}x{W}")
        _check(depth > 0, "depth", f"must be > 0, got {depth}")
        _check(num_heads > 0 and hidden_size % num_heads == 0, "hidden_size",
               f"{hidden_size} is not divisible by num_heads={num_heads}")
        _check(hidden_size % 4 == 0, "hidden_size", f"{hidden_size} must be divisible by 4 (2-D sin-cos embedding)")
        _check(time_scale > 0, "time_scale", f"must be > 0, got {time_scale}")
        _check(conditioning in CONDITIONINGS, "conditioning", f"must be one of {list(CONDITIONINGS)}, got {conditioning!r}")
        _check(text_dim is None or (int(text_dim) > 0 and int(text_len) > 0), "text_dim",
               f"text_dim and text_len must be > 0, got {text_dim} and {text_len}")
        self.conditioning = conditioning
        self.text_dim, self.text_len = (None, None) if text_dim is None else (int(text_dim), int(text_len))
        self.in_shape, self.num_classes, self.patch_size = (C, H, W), int(num_classes), int(patch_size)
        self.grid = (H // patch_size, W // patch_size)
        self.depth, self.hidden_size = depth, hidden_size
        self.learn_sigma, self.out_channels = bool(learn_sigma), 2 * C if learn_sigma else C

        p, D = patch_size, hidden_size
        if bottleneck_dim is None:
            self.x_embedder = nn.Conv2d(C, D, kernel_size=p, stride=p)
        else:
            _check(bottleneck_dim > 0, "bottleneck_dim", f"must be > 0, got {bottleneck_dim}")
            self.x_embedder = nn.Sequential(nn.Conv2d(C, bottleneck_dim, kernel_size=p, stride=p, bias=False),
                                            nn.Conv2d(bottleneck_dim, D, kernel_size=1))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, *self.grid)[None], persistent=False)  # (1, S, D)
        self.t_embedder = TimestepEmbedder(D, scale=float(time_scale))
        # A text model is conditioned by its captions (cross-attention), never by a class table (PixArt).
        self.label_embed = LabelEmbedder(self.num_classes, D) if self.num_classes > 0 and text_dim is None else None
        self.t_block = GlobalModulation(D) if conditioning == "adaln_single" else None
        self.y_embedder = CaptionEmbedder(self.text_dim, self.text_len, D) if text_dim is not None else None

        if ffn_layers is not None:
            special = {int(i) for i in ffn_layers}
            _check(all(0 <= i < depth for i in special), "ffn_layers", f"indices must lie in [0, {depth}), got {sorted(special)}")
        else:
            _check(ffn_every > 0, "ffn_every", f"must be > 0, got {ffn_every}")
            special = {i for i in range(depth) if i % ffn_every == ffn_every - 1}
        if ffn == "dense":
            special = set(range(depth))  # ffn_kwargs (e.g. dropout) then apply to every block
        self.ffn_layers = sorted(special) if ffn != "dense" else []     # blocks with the non-dense FFN
        self.blocks = nn.ModuleList(
            DiTBlock(D, num_heads, build_ffn(ffn if i in special else "dense", D, mlp_ratio,
                                             ffn_kwargs if i in special else None), qk_norm,
                     conditioning=conditioning, cross_attn=CrossAttention(D, num_heads) if text_dim is not None else None)
            for i in range(depth))
        self.final_layer = (SingleFinalLayer(D, p * p * self.out_channels) if conditioning == "adaln_single"
                            else FinalLayer(D, p * p * self.out_channels))

        self.token_selector = build_token_selector(token_selector, token_selector_kwargs, dim=D,
                                                   positions=lambda width: sincos_pos_embed_2d(width, *self.grid))
        spec = self.token_selector.decoder if self.token_selector is not None else None
        _check(spec is None or conditioning == "adaln_zero", "conditioning",
               "adaln_single with MaskDiT's decoder (decoder_depth > 0) is not built: the decoder's blocks and "
               "final layer read the encoder's adaLN-Zero c; use decoder_depth=0 or conditioning=adaln_zero")
        if select_blocks is None:
            start = 2 if depth >= 6 else (1 if depth >= 3 else 0)
            select_blocks = (0, depth) if spec is not None else (start, depth - start)
        _check(len(select_blocks) == 2 and 0 <= select_blocks[0] < select_blocks[1] <= depth, "select_blocks",
               f"need [start, end) with 0 <= start < end <= depth={depth}, got {list(select_blocks)}")
        self.select_blocks = (int(select_blocks[0]), int(select_blocks[1]))
        self.mask_decoder = None if spec is None else self.build_mask_decoder(spec, num_heads, mlp_ratio, qk_norm)
        self.last_aux_loss: torch.Tensor = torch.zeros(())
        self.initialize_weights()

    def build_mask_decoder(self, spec: DecoderSpec, num_heads: int, mlp_ratio: float, qk_norm: bool) -> MaskDecoder:
        """MaskDiT's decoder after every block (its encoder is the whole trunk), and a final layer of its width."""
        depth, D, (C, _, _), p = self.depth, self.hidden_size, self.in_shape, self.patch_size
        _check(self.select_blocks[1] == depth, "select_blocks",
               f"random_mask's decoder (decoder_depth > 0) follows MaskDiT, whose encoder is every block: "
               f"the range must end at depth={depth}, got {list(self.select_blocks)}")
        _check(spec.dim % (spec.num_heads or num_heads) == 0, "token_selector_kwargs.decoder_heads",
               f"decoder_dim={spec.dim} is not divisible by {spec.num_heads or num_heads} heads")
        self.final_layer = FinalLayer(spec.dim, p * p * self.out_channels, cond_dim=D)  # MaskDiT l. 331: it reads the decoder
        return MaskDecoder(spec, D, num_heads, mlp_ratio, qk_norm)

    def initialize_weights(self) -> None:
        """DiT init: xavier Linear, zero adaLN and output (adaLN-Zero), N(0, 0.02) embeddings."""
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        for m in self.modules():
            if m is not self and hasattr(m, "init_weights"):
                m.init_weights()  # an FFN (e.g. MoE) that initialises itself
        for conv in [self.x_embedder] if isinstance(self.x_embedder, nn.Conv2d) else list(self.x_embedder):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.conditioning == "adaln_zero":
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
            final = (self.final_layer.adaLN_modulation[-1], self.final_layer.linear)
        else:  # seed 003 Sec. 2.5: zero final projection of the (one) modulation path, E_b ~ N(0, 1/sqrt(D))
            final = (self.t_block.t_block[-1], self.final_layer.linear)
            for table in [b.scale_shift_table for b in self.blocks] + [self.final_layer.scale_shift_table]:
                nn.init.normal_(table, std=self.hidden_size ** -0.5)
        for lin in final:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.y_embedder is not None:  # PixArt: caption MLP N(0, 0.02); seed 003: cross-attention output zero
            nn.init.normal_(self.y_embedder.proj[0].weight, std=0.02)
            nn.init.normal_(self.y_embedder.proj[2].weight, std=0.02)
            nn.init.normal_(self.y_embedder.null, std=self.text_dim ** -0.5)
            for block in self.blocks:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)

    @property
    def num_tokens(self) -> int:
        """S = (H / p) * (W / p) tokens per image."""
        return self.grid[0] * self.grid[1]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, S, D) tokens with position embedding."""
        return self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, p*p*C') -> (B, C', H, W), C' = ``out_channels`` (2C with ``learn_sigma``)."""
        (_, H, W), p, (gh, gw), C = self.in_shape, self.patch_size, self.grid, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, H, W)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """c = t-embedding + label embedding (null class if ``y`` is None): (B, D).

        A text model's c is the t-embedding alone (its captions enter by cross-attention).
        """
        t = t.expand(batch) if t.dim() == 0 else t
        c = self.t_embedder(t) if self.time_map is None else self.t_embedder(self.time_map(t), scale=1.0)
        if self.label_embed is not None:
            if y is not None and y.is_floating_point():
                raise ConfigError(f"backbone: a class-conditioned DiT got a float condition of shape {tuple(y.shape)}",
                                  hint="set backbone.text_dim (and text_len) for caption embeddings")
            c = c + self.label_embed(y, batch, c.device)
        return c

    def block_condition(self, c: torch.Tensor) -> torch.Tensor:
        """What every trunk block reads: c (B, D) for adaLN-Zero, the global modulation (B, 6, D) for AdaLN-Single."""
        return c if self.t_block is None else self.t_block(c)

    def text_tokens(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Caption tokens (B, L, D) for the blocks' cross-attention (null caption for dropped/None), or None."""
        if self.y_embedder is None:
            return None
        if y is not None and (not y.is_floating_point() or tuple(y.shape[1:]) != (self.text_len, self.text_dim)):
            raise ConfigError(f"backbone: the text condition has shape {tuple(y.shape)}, the backbone expects "
                              f"(B, {self.text_len}, {self.text_dim}) float caption embeddings",
                              hint="match backbone.text_len / text_dim to the caption shards")
        return self.y_embedder(y, batch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                gamma: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,), y (B,) or None -> (B, C, H, W) ((B, 2C, H, W) with ``learn_sigma``).

        ``gamma`` overrides the token selector's sparsity for this call (Sparse Guidance's
        strong/weak branches); ``generator`` draws the selector's random subsets.
        """
        B = x.shape[0]
        h = self.patchify(x)                                               # (B, S, D)
        c = self.condition(t, y, B)                                        # (B, D)
        c_blocks = self.block_condition(c)                                 # (B, D) or (B, 6, D)
        ctx: dict[str, Any] = {"c": c, "t": t, "y": y, "block": 0, "token_state": None,
                               "text": self.text_tokens(y, B)}
        total_aux = torch.zeros((), device=h.device, dtype=h.dtype)
        start, end = self.select_blocks
        h_full, state = h, None
        skipped = dropped_blocks(len(self.blocks))                        # S^2-Guidance's sub-network, else empty
        for i, block in enumerate(self.blocks):
            if self.token_selector is not None and i == start:
                h_full = h
                h, state = self.token_selector.select(h, generator, gamma=gamma)   # (B, S', D)
                ctx["token_state"] = state
            ctx["block"] = i
            if i not in skipped:
                h, aux = self.run_block(block, h, c_blocks, ctx)
                total_aux = total_aux + aux_loss(aux, total_aux)
            if self.token_selector is not None and i == end - 1:
                if self.mask_decoder is not None:
                    h = self.mask_decoder.embed(h, c)                      # (B, S', D_dec), kept tokens only
                h = self.token_selector.restore(h, h_full, state)          # (B, S, D) or (B, S, D_dec)
                ctx["token_state"] = None
        if self.mask_decoder is not None:  # MaskDiT's decoder on every token (models/maskdit.py l. 546-548)
            for block in self.mask_decoder.blocks:
                h, _ = self.run_block(block, h, c, ctx)                    # dense FFNs: no auxiliary loss
        out = self.final_layer(h, c)                                       # (B, S, p*p*C)
        if self.token_selector is not None:  # masking's MAE loss on the dropped tokens (seed 004 Eq. 4)
            out, sel_aux = self.token_selector.finish(out, self.tokens_of(x), state)
            total_aux = total_aux + sel_aux
        self.last_aux_loss = total_aux
        return self.unpatchify(out)

    def run_block(self, block: DiTBlock, h: torch.Tensor, c: torch.Tensor,
                  ctx: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """One block, with activation checkpointing when asked for (SiT-XL/2 at batch 256 on one 80 GB
        card); the RNG state is replayed, so dropout in the recomputed forward draws what the first one drew."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, c, ctx, use_reentrant=False)
        return block(h, c, ctx)

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, S, p*p*C) in the output's token layout (inverse of :meth:`unpatchify`)."""
        (C, H, W), p, (gh, gw) = self.in_shape, self.patch_size, self.grid
        x = x.reshape(x.shape[0], C, gh, p, gw, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(x.shape[0], gh * gw, p * p * C)


@register("backbone", "sit")
class SiT(DiT):
    """SiT (Ma et al. 2024): exactly the DiT network, trained with the interpolant objective.

    A subclass rather than a second name on ``DiT`` only so ``registered_name`` stays
    right for each; it adds nothing.
    """


@register("backbone", "jit")
class JiT(DiT):
    """JiT ("Just image Transformer", Li & He 2025): DiT over pixels with large patches.

    Defaults are JiT-B/16 on 256x256x3 (768 wide, 12 blocks, 12 heads, bottleneck 128,
    SwiGLU FFN, qk-norm).  Not reproduced: RoPE and in-context class tokens (JiT's
    other changes); position is the fixed 2-D sin-cos embedding and the class enters
    through adaLN as in DiT.  The objective (``x_prediction``) reads the output as x1.
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
                 patch_size: int = 16, hidden_size: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, bottleneck_dim: int | None = 128,
                 ffn: str = "swiglu", ffn_kwargs: dict[str, Any] | None = None, ffn_every: int = 1,
                 ffn_layers: tuple[int, ...] | None = None, token_selector: str | None = None,
                 token_selector_kwargs: dict[str, Any] | None = None,
                 select_blocks: tuple[int, ...] | None = None, checkpointing: bool = False) -> None:
        super().__init__(in_shape=in_shape, num_classes=num_classes, patch_size=patch_size, checkpointing=checkpointing,
                         hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         qk_norm=qk_norm, bottleneck_dim=bottleneck_dim, ffn=ffn, ffn_kwargs=ffn_kwargs,
                         ffn_every=ffn_every, ffn_layers=ffn_layers, token_selector=token_selector,
                         token_selector_kwargs=token_selector_kwargs, select_blocks=select_blocks)
