"""AdaLN-Single and text conditioning for the DiT backbone (seed 003 Sec. 2.5, Eq. 14-19; PixArt-alpha).

Kept apart from :mod:`harness.backbones.dit` because these modules are one job each -- the
global modulation of AdaLN-Single, PixArt's final layer, cross-attention to caption tokens,
the caption projection with its learned null embedding -- and the DiT file composes them.

Why the global modulation is 6D, not the 6LD of seed 003 Eq. 14 as printed: an
``MLP_global`` with 6LD outputs has D*6LD + 6LD parameters, exactly the per-block adaLN
MLPs of adaLN-Zero, and would save nothing; the "891M -> 605M" of Eq. 16's text only
follows with PixArt-alpha's layout, one SiLU + Linear(D, 6D) (``t_block``) whose output
every block shares (C_b = c for all b), plus the learned per-block E_b (6, D).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

CONDITIONINGS = ("adaln_zero", "adaln_single")


class GlobalModulation(nn.Module):
    """Seed 003 Eq. 14-15 (PixArt's ``t_block``): tau(t) (B, D) -> c (B, 6, D), computed once per forward.

    The Linear is zero-initialised by the backbone (seed 003: "we initialize the final linear
    projection in each modulation path to zero"; PixArt itself draws it from N(0, 0.02)).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.t_block(c).view(c.shape[0], 6, self.dim)


def per_block_embedding(dim: int, rows: int = 6) -> nn.Parameter:
    """E_b of Eq. 16, (rows, D), N(0, std 1/sqrt(D)).

    Seed 003 writes N(0, 1/sqrt(d)); we read the second argument as the standard deviation,
    as PixArt's code does (``torch.randn(6, hidden_size) / hidden_size ** 0.5``).
    """
    return nn.Parameter(torch.randn(rows, dim) / math.sqrt(dim))


class SingleFinalLayer(nn.Module):
    """PixArt's ``T2IFinalLayer``: (shift, scale) = learned table (2, D) + the t embedding, then LN + Linear.

    No per-model MLP in this modulation path either: the table replaces DiT's
    SiLU + Linear(D, 2D) of the final layer.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.scale_shift_table = per_block_embedding(dim, rows=2)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, S, D), c (B, D) the t embedding -> (B, S, out_dim)."""
        shift, scale = (self.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)   # (B, 1, D) each
        return self.linear(self.norm(x) * (1 + scale) + shift)


class CrossAttention(nn.Module):
    """Eq. 18's CrossAttn: queries from the image tokens, keys/values from the caption tokens.

    ``proj`` (the output projection) is zero-initialised by the backbone (seed 003 Sec. 2.5), so a
    text model starts as its text-free twin.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, S, D), text (B, L, D) -> (B, S, D)."""
        B, S, D = x.shape
        H = self.num_heads
        q = self.q(x).view(B, S, H, D // H).transpose(1, 2)                      # (B, H, S, D/H)
        k, v = self.kv(text).view(B, text.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, L, D/H)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, S, D))


class CaptionEmbedder(nn.Module):
    """Caption embeddings (B, L, text_dim) -> tokens (B, L, D), with the learned null caption (Sec. 2.5, App.).

    ``null`` is e_null in R^{L x text_dim} (seed 003: 77 x 768 for CLIP-ViT-L/14), a learned
    parameter (seed 003: "learned null embeddings"; PixArt keeps it as a fixed buffer).  A row of
    ``y`` that is entirely NaN marks a dropped condition (the trainer's CFG label dropout,
    :func:`harness.train.batches.apply_label_dropout`) and ``y = None`` drops all of them (CFG's
    unconditional branch); either is replaced by ``null`` before the projection.
    The projection is PixArt's ``Mlp``: Linear(text_dim, D), GELU(tanh), Linear(D, D).
    """

    def __init__(self, text_dim: int, text_len: int, dim: int) -> None:
        super().__init__()
        self.text_dim, self.text_len = text_dim, text_len
        self.proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.randn(text_len, text_dim) / math.sqrt(text_dim))

    def with_null(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, L, text_dim) with dropped (all-NaN) items, or None, -> (B, L, text_dim) with ``null`` in their place."""
        null = self.null.expand(batch, -1, -1)
        if y is None:   # a copy, not a view of the parameter (module hooks, e.g. FlopCounterMode's, refuse such views)
            return null.clone()
        dropped = torch.isnan(y).flatten(1).all(dim=1).view(-1, 1, 1)
        return torch.where(dropped, null.to(y.dtype), y)

    def forward(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        return self.proj(self.with_null(y, batch).to(self.proj[0].weight.dtype))
