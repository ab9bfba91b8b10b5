"""A residual MLP for vector data: the backbone of the Gaussian-mixture oracle.

The analytic Gaussian mixture (DESIGN.md, "Data available offline") has a known exact
velocity field, so monitors, boundaries (seed 000) and objective conversions are tested
against it in seconds; the network only needs to be small, smooth and conditioned on t
(and optionally on the mixture component as class, seed 003's data-partitioned experts).
"""
from __future__ import annotations

import torch
from torch import nn

from harness.backbones.dit import LabelEmbedder, timestep_embedding
from harness.core.errors import ConfigError
from harness.core.registry import register


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 LN(h) + E emb): pre-norm residual MLP block conditioned on the embedding."""

    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """h (B, W), emb (B, E) -> (B, W)."""
        return h + self.fc2(self.drop(nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))))


@register("backbone", "mlp")
class MLP(nn.Module):
    """Residual MLP ``(x (B, D), t (B,), y) -> (B, D)`` with sinusoidal time and class embedding.

    The output layer is zero-initialised so the initial field is 0 (as DiT's adaLN-Zero),
    which keeps the first steps of training well behaved on any data scale.
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
                 width: int = 128,       # hidden width
                 depth: int = 3,         # residual blocks
                 time_dim: int = 64,     # sinusoids of 1000 t fed to the time MLP
                 dropout: float = 0.0,
                 ) -> None:
        super().__init__()
        if len(in_shape) != 1:
            raise ConfigError(f"backbone.name: mlp needs vector data (D,), got in_shape={tuple(in_shape)}")
        for key, value, least in (("width", width, 1), ("depth", depth, 0), ("time_dim", time_dim, 2)):
            if value < least:
                raise ConfigError(f"backbone.{key} must be >= {least}, got {value}")
        self.in_shape, self.num_classes, self.time_dim = (int(in_shape[0]),), int(num_classes), time_dim
        dim = self.in_shape[0]
        self.time_embed = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label_embed = LabelEmbedder(self.num_classes, width) if self.num_classes > 0 else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, width, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, D), t (B,), y (B,) or None -> (B, D)."""
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.time_dim).to(x.dtype))   # (B, W)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, B, x.device)
        emb = nn.functional.silu(emb)
        h = self.inp(x)                                                        # (B, W)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
