"""ADM-style UNet (Dhariwal & Nichol 2021, as torchcfm ships it) for small images.

Seed 000 (Sec. 4.2, Tab. 3) swaps its transformer for "a standard convolutional UNet" on
unconditional CIFAR-10 to show CBS is architecture-agnostic; its Table 7 (hyper-parameters)
did not survive into our copy, so ``unet_cifar10`` takes torchcfm's CIFAR-10 UNet (128
channels, multipliers (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1).

Structure: conv stem -> per level ``num_res_blocks`` ResBlocks (+ attention at the listed
resolutions) and a strided-conv downsample -> middle Res/Attn/Res -> mirrored decoder with
skip concatenations and nearest+conv upsampling -> GroupNorm/SiLU/zero conv.  The time
(sinusoids of 1000 t) and class embeddings are summed and *added* to every ResBlock.

``stem_unshuffle = r > 1`` folds r x r pixel blocks into channels first (28x28x1 ->
14x14x4 for r = 2) and unfolds at the end: FINDINGS measured this 4x faster per step
than a full-resolution UNet of similar quality on Fashion-MNIST.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones.dit import LabelEmbedder, timestep_embedding
from harness.core.errors import ConfigError
from harness.core.registry import register


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` dividing ``channels`` (ADM uses 32)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, + Linear(emb), GN-SiLU-dropout-zero conv, with a 1x1 skip if channels change."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = group_norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, H, W), emb (B, E) already SiLU'd -> (B, Cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions (ADM ``AttentionBlock``), zero-initialised output."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ConfigError(f"backbone.attn_head_channels: {head_channels} does not split {channels} channels")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])   # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Down(nn.Module):
    """Strided 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Up(nn.Module):
    """Nearest x2 then 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """A sequence of ResBlock/AttnBlock/Down/Up layers all called as ``layer(x, emb)``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


@register("backbone", "unet")
class UNet(nn.Module):
    """ADM/torchcfm UNet ``(x (B, C, H, W), t (B,), y) -> (B, C, H, W)``."""

    def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
                 channels: int = 128,                          # base width (model_channels)
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2),  # width multiplier per level
                 num_res_blocks: int = 2,                      # ResBlocks per level (decoder: +1)
                 attn_resolutions: tuple[int, ...] = (16,),    # feature-map sizes (after the stem) with attention
                 attn_head_channels: int = 64,                 # channels per attention head
                 mid_attention: bool = True,                   # attention in the middle block (ADM: always)
                 dropout: float = 0.1,
                 norm_groups: int = 32,                        # GroupNorm groups (reduced to divide the width)
                 stem_unshuffle: int = 1,                      # fold r x r pixels into channels first
                 ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(f"backbone.name: unet needs (C, H, W) data, got in_shape={tuple(in_shape)}")
        C, H, W = (int(s) for s in in_shape)
        r = int(stem_unshuffle)
        if r < 1 or H % r or W % r:
            raise ConfigError(f"backbone.stem_unshuffle: {r} does not divide the image size {H}x{W}")
        levels = len(channel_mult)
        h, w = H // r, W // r
        if levels == 0 or h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ConfigError(f"backbone.channel_mult: {levels} levels halve {h}x{w} {levels - 1} times; "
                              f"the size must be divisible by {2 ** max(levels - 1, 0)}")
        if channels <= 0 or num_res_blocks < 1:
            raise ConfigError(f"backbone.channels and num_res_blocks must be >= 1, got {channels}, {num_res_blocks}")
        self.in_shape, self.num_classes, self.unshuffle, self.channels = (C, H, W), int(num_classes), r, channels
        emb_dim = 4 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = LabelEmbedder(self.num_classes, emb_dim) if self.num_classes > 0 else None

        attn_at = {int(a) for a in attn_resolutions}
        res_args = dict(emb_dim=emb_dim, dropout=dropout, groups=norm_groups)
        ch = channels * channel_mult[0]
        self.stem = nn.Conv2d(C * r * r, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, size = [ch], min(h, w)
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                stage = Stage([ResBlock(ch, channels * mult, **res_args)])
                ch = channels * mult
                if size in attn_at:
                    stage.append(AttnBlock(ch, attn_head_channels, norm_groups))
                self.down.append(stage)
                skips.append(ch)
            if level != levels - 1:
                self.down.append(Stage([Down(ch)]))
                skips.append(ch)
                size //= 2
        self.mid = Stage([ResBlock(ch, ch, **res_args)]
                         + ([AttnBlock(ch, attn_head_channels, norm_groups)] if mid_attention else [])
                         + [ResBlock(ch, ch, **res_args)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                stage = Stage([ResBlock(ch + skips.pop(), channels * mult, **res_args)])
                ch = channels * mult
                if size in attn_at:
                    stage.append(AttnBlock(ch, attn_head_channels, norm_groups))
                if level and i == num_res_blocks:
                    stage.append(Up(ch))
                    size *= 2
                self.up.append(stage)
        self.out = nn.Sequential(group_norm(ch, norm_groups), nn.SiLU(), zero(nn.Conv2d(ch, C * r * r, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,), y (B,) or None -> (B, C, H, W)."""
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.channels).to(x.dtype))   # (B, 4ch)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, B, x.device)
        emb = F.silu(emb)  # the SiLU of ADM's per-block emb_layers, applied once
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)                           # (B, C r^2, H/r, W/r)
        h = self.stem(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.out(h)
        return F.pixel_shuffle(h, self.unshuffle) if self.unshuffle > 1 else h
