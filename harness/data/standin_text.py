"""``standin-text-encoder-v1``: a deterministic, dependency-free caption encoder for CPU twins of text models.

Why: seed 003 conditions on frozen CLIP-ViT-L/14 text embeddings (77 x 768), which a CPU test
cannot compute.  This stand-in gives each lower-cased whitespace token a fixed Gaussian vector
(seeded by the SHA-256 of the token, so it never depends on a vocabulary or on call order),
adds a fixed per-position vector, and pads to ``text_len`` with a fixed pad vector.  It is NOT
CLIP and no record may call it so: every record names it :data:`ENCODER`.
"""
from __future__ import annotations

import hashlib
import math

import torch

ENCODER = "standin-text-encoder-v1"


def _vector(key: str, dim: int) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(f"{ENCODER}:{key}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g) / math.sqrt(dim) * 4.0


def encode_captions(captions: list[str], text_len: int = 77, text_dim: int = 768) -> torch.Tensor:
    """Captions -> (N, text_len, text_dim) float32; tokens past ``text_len`` are cut, as CLIP's tokenizer does."""
    out = torch.empty(len(captions), text_len, text_dim)
    pad = _vector("<pad>", text_dim)
    positions = torch.stack([_vector(f"<pos:{i}>", text_dim) for i in range(text_len)]) * 0.25
    for n, caption in enumerate(captions):
        tokens = caption.lower().split()[:text_len]
        rows = [_vector(f"tok:{tok}", text_dim) for tok in tokens] + [pad] * (text_len - len(tokens))
        out[n] = torch.stack(rows) + positions
    return out
