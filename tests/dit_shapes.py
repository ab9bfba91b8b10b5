"""A shape-only official DiT checkpoint: every tensor a stride-0 view of one zero (a few bytes on disk), the
fixed ``pos_embed`` real (it is compared).  Enough for ``check_transfer`` / ``harness describe``, which read
shapes only; the names follow DiT ``models.py`` (written out here, not taken from ``dit_import``'s map)."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.backbones.dit import sincos_pos_embed_2d


def shape_only_official(path: Path, *, depth: int = 28, D: int = 1152, C: int = 4, grid: int = 16, p: int = 2,
                        classes: int = 1000, mlp: int = 4) -> Path:
    """DiT-XL/2 256x256 (learn_sigma: 2C output channels) by default."""
    def z(*shape: int) -> torch.Tensor:
        return torch.zeros(1).expand(*shape)
    state = {"pos_embed": sincos_pos_embed_2d(D, grid, grid)[None].clone(),
             "x_embedder.proj.weight": z(D, C, p, p), "x_embedder.proj.bias": z(D),
             "t_embedder.mlp.0.weight": z(D, 256), "t_embedder.mlp.0.bias": z(D),
             "t_embedder.mlp.2.weight": z(D, D), "t_embedder.mlp.2.bias": z(D),
             "y_embedder.embedding_table.weight": z(classes + 1, D),
             "final_layer.linear.weight": z(p * p * 2 * C, D), "final_layer.linear.bias": z(p * p * 2 * C),
             "final_layer.adaLN_modulation.1.weight": z(2 * D, D), "final_layer.adaLN_modulation.1.bias": z(2 * D)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "attn.qkv.weight": z(3 * D, D), b + "attn.qkv.bias": z(3 * D),
                      b + "attn.proj.weight": z(D, D), b + "attn.proj.bias": z(D),
                      b + "mlp.fc1.weight": z(mlp * D, D), b + "mlp.fc1.bias": z(mlp * D),
                      b + "mlp.fc2.weight": z(D, mlp * D), b + "mlp.fc2.bias": z(D),
                      b + "adaLN_modulation.1.weight": z(6 * D, D), b + "adaLN_modulation.1.bias": z(6 * D)})
    torch.save(state, path)
    return path
