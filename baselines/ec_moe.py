"""Expert-choice MoE FFN within each sample (EC-DiT; seed 002 Sec. 2.1 and Alg. 1), the second baseline.

Every expert picks its top ``k = int(S / N * C)`` tokens *of each sample* by the router
affinity ``softmax_E(x W_r)`` (Eq. 1, softmax over experts, then top-k along the tokens),
and a token's output is the affinity-weighted sum of the experts that picked it.  Tokens
compete only with tokens of the same sample (same t and class: "local", seed 002 Tab. 8,
L2), so no balancing loss is needed and every expert processes exactly ``k`` tokens per
sample; C = 1 (``capacity``) costs what the dense FFN costs (Sec. 2.2, "EC-DiT selects
top-(S/N) tokens per sample").  Router initialised N(0, 0.006^2) as the authors' code.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.backbones.moe import (ExpertBank, MoEFFN, check_capacity, check_experts, expert_width,
                                   tokens_per_expert)
from harness.core.registry import register


@register("ffn", "ec_moe")
class ExpertChoiceMoE(MoEFFN):
    """EC-MoE layer: each expert takes its top-k tokens within each sample."""

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *,
                 num_experts: int = 8,                 # N experts per MoE layer
                 capacity: float = 1.0,                # C: each expert takes int(S / N * C) tokens per sample
                 expert_ratio: float | None = None,    # expert hidden width / D; None = hidden_ratio
                 ) -> None:
        super().__init__()
        n = check_experts(num_experts)
        self.nominal_capacity = check_capacity(capacity)
        self.router = nn.Parameter(torch.empty(n, dim))                  # W_r^T (N, D), no bias
        self.experts = ExpertBank(n, dim, expert_width(dim, hidden_ratio, expert_ratio))
        self.init_weights()

    def init_weights(self) -> None:
        if not self.router.is_meta:
            nn.init.normal_(self.router, std=0.006)
        self.experts.reset_parameters()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, D) -> gate (B, N, k) affinities and index (B, N, k) of each expert's tokens per sample."""
        B, S, _ = x.shape
        k = tokens_per_expert(S, self.num_experts, self.nominal_capacity, "each sample")
        affinity = torch.softmax(x @ self.router.t().to(x.dtype), dim=-1)   # (B, S, N), Eq. 1
        return affinity.transpose(1, 2).topk(k, dim=-1)                    # (B, N, k) each

    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict]:
        """(B, S, D) -> ((B, S, D), {})."""
        B, S, D = x.shape
        gate, index = self.route(x)                                         # (B, N, k)
        N, k = self.num_experts, index.shape[-1]
        rows = (index + torch.arange(B, device=x.device).view(B, 1, 1) * S).transpose(0, 1).reshape(N, B * k)
        flat = x.reshape(B * S, D)
        out = self.experts(flat[rows])                                      # (N, B k, D)
        out = out * gate.transpose(0, 1).reshape(N, B * k, 1).to(out.dtype)
        y = out.new_zeros(B * S, D).index_add(0, rows.reshape(-1), out.reshape(N * B * k, D))
        self.record_capacity(N * B * k, B * S)
        return y.reshape(B, S, D), {}
