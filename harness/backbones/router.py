"""A small router network: (x_t (B, ...), t (B,)) -> logits (B, K) over the K data clusters.

Seed 003 (Sec. 6.3) routes with a DiT-B/2 on noisy latents and the timestep only (no text);
``dit``-sized routers are for the full-scale configs.  This one is the CPU-scale router:
for images a strided-conv encoder (GroupNorm/SiLU, the time embedding added to every
stage) with global average pooling; for vectors a residual MLP.  ``num_classes`` is the
number of clusters K (the router unit's data are labelled by cluster id); labels are never
an input, since p(k | x_t, t) must not see the answer.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.backbones.dit import timestep_embedding
from harness.backbones.mlp import ResidualBlock
from harness.backbones.unet import group_norm
from harness.core.errors import ConfigError
from harness.core.registry import register


class _ConvStage(nn.Module):
    """conv3x3 (stride s) -> GN -> + Linear(emb) -> SiLU: (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = group_norm(cout, 8)
        self.emb = nn.Linear(emb_dim, cout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.norm(self.conv(x)) + self.emb(emb)[:, :, None, None])


@register("backbone", "router")
class Router(nn.Module):
    """Router ``(x, t, y ignored) -> (B, K)`` logits; conv encoder for images, MLP for vectors."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
                 width: int = 32,        # channels of the first stage (doubling per stage) / MLP width
                 depth: int = 3,         # conv stages (each halves H and W: 28 -> 14 -> 7 -> 4) / MLP blocks
                 time_dim: int = 64,     # sinusoids of 1000 t
                 ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"backbone (router): needs data labelled by >= 2 clusters, got num_classes={num_classes}",
                              hint="the router unit's data node must use labels: cluster and method.k >= 2")
        for key, value, least in (("width", width, 1), ("depth", depth, 1), ("time_dim", time_dim, 2)):
            if value < least:
                raise ConfigError(f"method.router_backbone.{key} must be >= {least}, got {value}")
        self.in_shape, self.time_dim, self.image = tuple(in_shape), int(time_dim), len(in_shape) == 3
        self.time_embed = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        if self.image:
            chans = [in_shape[0]] + [width * 2 ** i for i in range(depth)]
            self.stages = nn.ModuleList(_ConvStage(a, b, width, 2) for a, b in zip(chans, chans[1:]))
            feat = chans[-1]
        else:
            dim = 1
            for s in in_shape:
                dim *= int(s)
            self.inp = nn.Linear(dim, width)
            self.stages = nn.ModuleList(ResidualBlock(width, width, 0.0) for _ in range(depth))
            feat = width
        self.head = nn.Sequential(nn.LayerNorm(feat), nn.Linear(feat, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) or (B, D), t (B,) -> logits (B, K)."""
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.time_dim).to(x.dtype))     # (B, W)
        if self.image:
            h = x
            for stage in self.stages:
                h = stage(h, emb)
            h = h.mean((2, 3))                                                        # (B, C)
        else:
            h = self.inp(x.reshape(B, -1))
            act = nn.functional.silu(emb)
            for block in self.stages:
                h = block(h, act)
        return self.head(h)


@register("backbone", "dit_router")
class DiTRouter(nn.Module):
    """Seed 003 Sec. 6.3's router: a DiT (DiT-B/2: 12 blocks, width 768, 12 heads, ~130M parameters) on the noisy
    latent and the timestep only, trained from scratch, "without text conditioning"; its tokens, normalised and
    modulated by the t-embedding as DiT's final layer does, are mean-pooled into logits over the K clusters.

    The trunk is :class:`harness.backbones.dit.DiT` built unconditional (``num_classes=0``: the cluster labels the
    router is trained on are never an input); its final layer is replaced by the pooled classification head.
    """

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int, patch_size: int = 2, hidden_size: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, checkpointing: bool = False) -> None:
        super().__init__()
        from harness.backbones.dit import DiT, FinalLayer

        if num_classes < 2:
            raise ConfigError(f"backbone (dit_router): needs data labelled by >= 2 clusters, got num_classes={num_classes}",
                              hint="the router unit's data node must use labels: cluster and method.k >= 2")
        self.trunk = DiT(in_shape=tuple(in_shape), num_classes=0, patch_size=patch_size, hidden_size=hidden_size,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, checkpointing=checkpointing)
        del self.trunk.final_layer                     # no velocity output: every parameter gets a gradient (DDP)
        # DiT's final layer with K outputs per token; its linear map commutes with the token mean, so the mean of
        # the per-token logits is the head applied to the pooled, t-modulated tokens
        self.head = FinalLayer(hidden_size, num_classes)
        for layer in (self.head.adaLN_modulation[-1], self.head.linear):   # DiT's zero-init: uniform p(k) at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) -> logits (B, K); ``y`` is ignored (p(k | x_t, t) must not see the answer)."""
        trunk, B = self.trunk, x.shape[0]
        h = trunk.patchify(x)
        c = trunk.condition(t, None, B)
        c_blocks = trunk.block_condition(c)
        ctx = {"c": c, "t": t, "y": None, "block": 0, "token_state": None, "text": None}
        for i, block in enumerate(trunk.blocks):
            ctx["block"] = i
            h, _ = trunk.run_block(block, h, c_blocks, ctx)
        return self.head(h, c).mean(1)
