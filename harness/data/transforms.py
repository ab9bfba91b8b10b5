"""Pixel conversions and the generic image transforms every dataset accepts.

Why these and no more: the papers' CPU-scale twins need 28x28x1 data to look like a
32x32x3 dataset (so one backbone config serves Fashion-MNIST, MNIST and CIFAR-10), and
the evaluator needs uint8 images back.  Augmentation (flips, crops) is deliberately
absent: the harness compares methods under one fixed data protocol.

Conventions: float images are float32 in [-1, 1], ``(N, C, H, W)``; uint8 images are
0..255 with the same layout.  ``x = u / 127.5 - 1`` and its inverse round to nearest.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError

BACKGROUND = -1.0  # the value padding uses: black, the background of (Fashion-)MNIST digits


def uint8_to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [-1, 1] (same shape)."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {t.dtype}")
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 0..255, rounding to nearest and clipping out-of-range values."""
    return ((x.detach().to(torch.float32).cpu() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def unit_to_float(x: np.ndarray | torch.Tensor, max_value: float) -> torch.Tensor:
    """Values in [0, max_value] (e.g. digits' 0..16) -> float32 [-1, 1]."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t.mul_(2.0 / float(max_value)).sub_(1.0)


def should_pad(size: int, resolution: int) -> bool:
    """Pad (rather than resize) when the image is smaller by a border of at most a quarter of its size.

    28 -> 32 pads 2 pixels per side (the LeNet convention, keeps every pixel exact);
    8 -> 32 or 28 -> 64 resizes, since a border that wide would be mostly empty canvas.
    """
    return size < resolution <= size + max(size // 4, 1)


def resize_images(x: torch.Tensor, size: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of ``(N, C, H, W)`` to ``size x size``, in chunks."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.float32)
    shrink = size < max(x.shape[-2:])
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = F.interpolate(x[i:i + chunk].to(torch.float32), size=(size, size), mode="bilinear",
                                         align_corners=False, antialias=shrink)
    return out.clamp_(-1.0, 1.0)


def pad_images(x: torch.Tensor, size: int, value: float = BACKGROUND) -> torch.Tensor:
    """Centre ``(N, C, H, W)`` on a ``size x size`` canvas of ``value`` (extra pixel right/bottom if odd)."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=value)


def pad_or_resize(x: torch.Tensor, resolution: int) -> tuple[torch.Tensor, str]:
    """Bring images to ``resolution``; returns the images and what was done (``pad``/``resize``/``none``)."""
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x, "none"
    if h == w and should_pad(h, resolution):
        return pad_images(x, resolution), "pad"
    return resize_images(x, resolution), "resize"


def replicate_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """1 -> ``channels`` by repeating the grey plane; equal counts pass through."""
    c = x.shape[1]
    if c == channels:
        return x
    if c != 1:
        raise ConfigError(f"data.channels={channels}: can only replicate 1-channel images, these have {c}",
                          hint="set data.channels=null")
    return x.expand(-1, channels, -1, -1).contiguous()
