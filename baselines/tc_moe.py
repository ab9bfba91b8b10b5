"""Token-choice MoE FFN (TC-DiT; seed 002 Eq. 2-3 and Alg. 2), the first baseline DiffMoE beats.

Each token picks its top-K experts by ``softmax_E(x W_r)`` (Eq. 1) and its output is the
gate-weighted sum of those experts (Eq. 3; the weights are *not* renormalised, as the
authors' DiT-MoE-style gate has ``norm_topk_prob = False``).  Tokens never see each other
while routing ("isolated", seed 002 Tab. 8, L1), so a load-balancing loss is needed:
``alpha * sum_i P_i f_i`` with ``P_i`` the mean router probability of expert i and ``f_i``
N times the fraction of (token, choice) pairs sent to it (Switch/DeepSeek form, the
authors' ``MoEGate``; alpha = 0.01).  It equals ``alpha`` for a uniform router and grows
towards ``N * alpha`` as routing collapses onto one expert.

``capacity_factor`` (None = no dropping, as the authors' TC-DiT) caps each expert at
``ceil(capacity_factor * T K / N)`` pairs; pairs beyond it are dropped in token order
(Switch Transformer), so the token keeps only its residual path for that choice.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harness.backbones.moe import ExpertBank, MoEFFN, check_capacity, check_experts, expert_width, ffn_key
from harness.core.errors import ConfigError
from harness.core.registry import register


@register("ffn", "tc_moe")
class TokenChoiceMoE(MoEFFN):
    """TC-MoE layer: per-token top-K over N experts, load-balancing auxiliary loss."""

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *,
                 num_experts: int = 8,                 # N experts per MoE layer
                 top_k: int = 1,                       # experts per token; 1 = the dense FFN's compute (seed 002 Sec. 2.2)
                 aux_loss_weight: float = 0.01,        # alpha of the load-balancing loss; 0 disables it
                 capacity_factor: float | None = None,  # pairs per expert / (T K / N); None = no token dropping
                 expert_ratio: float | None = None,    # expert hidden width / D; None = hidden_ratio
                 ) -> None:
        super().__init__()
        n = check_experts(num_experts)
        if not isinstance(top_k, int) or not 1 <= top_k <= n:
            raise ConfigError(f"{ffn_key('top_k')} must be an integer in [1, num_experts={n}], got {top_k!r}")
        if not aux_loss_weight >= 0:
            raise ConfigError(f"{ffn_key('aux_loss_weight')} must be >= 0, got {aux_loss_weight!r}")
        self.capacity_factor = None if capacity_factor is None else check_capacity(capacity_factor, "capacity_factor")
        self.top_k, self.aux_loss_weight, self.nominal_capacity = top_k, float(aux_loss_weight), float(top_k)
        self.router = nn.Parameter(torch.empty(n, dim))                  # W_r^T (N, D), no bias
        self.experts = ExpertBank(n, dim, expert_width(dim, hidden_ratio, expert_ratio))
        self.init_weights()

    def init_weights(self) -> None:
        """Router as the authors' ``MoEGate`` (kaiming-uniform, a = sqrt 5); experts as DiT's Linear."""
        if not self.router.is_meta:
            nn.init.kaiming_uniform_(self.router, a=math.sqrt(5))
        self.experts.reset_parameters()

    def balance_loss(self, probs: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """``alpha * sum_i P_i f_i``: probs (T, N) router softmax, choice (T, K) chosen experts."""
        n = self.num_experts
        counts = torch.zeros(n, device=probs.device, dtype=probs.dtype)
        counts = counts.index_add(0, choice.reshape(-1), torch.ones(choice.numel(), device=probs.device, dtype=probs.dtype))
        f = counts * n / choice.numel()                                     # (N,) N x fraction of pairs
        return self.aux_loss_weight * (probs.mean(0) * f).sum()

    def expert_limit(self, pairs: int) -> int | None:
        """Pairs an expert may process, or None without a capacity factor."""
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * pairs / self.num_experts))

    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict]:
        """(B, S, D) -> ((B, S, D), {"loss": balance loss in training})."""
        B, S, D = x.shape
        flat = x.reshape(B * S, D)                                          # (T, D)
        probs = torch.softmax(flat @ self.router.t().to(flat.dtype), dim=-1)  # (T, N), Eq. 1
        gate, choice = probs.topk(self.top_k, dim=-1)                       # (T, K), Eq. 2
        tokens = torch.arange(B * S, device=x.device).repeat_interleave(self.top_k)  # token of each pair
        pair_expert, pair_gate = choice.reshape(-1), gate.reshape(-1)       # (T K,)
        limit = self.expert_limit(pair_expert.numel())
        if flat.is_meta:  # no data to route on the meta device: count the nominal balanced load
            k = min(pair_expert.numel() // self.num_experts, limit or pair_expert.numel())
            groups = [torch.arange(k, device=x.device)] * self.num_experts
        else:  # pairs grouped by expert, token order kept within each group (one sort, one sync)
            order = pair_expert.argsort(stable=True)
            groups = list(order.split(torch.bincount(pair_expert, minlength=self.num_experts).tolist()))
        rows, outs = [], []
        for i, sel in enumerate(groups):  # every expert runs (maybe on 0 tokens): DDP sees all parameters used
            sel = sel if limit is None else sel[:limit]                     # drop overflow in token order
            rows.append(tokens[sel])
            outs.append(self.experts.one(i, flat[rows[-1]]) * pair_gate[sel, None].to(flat.dtype))
        rows_all, out_all = torch.cat(rows), torch.cat(outs)
        out = out_all.new_zeros(B * S, D).index_add(0, rows_all, out_all)
        self.record_rows(rows_all, B, S, ctx)
        aux = {}
        if self.training and self.aux_loss_weight > 0:
            aux["loss"] = self.balance_loss(probs, choice)
        return out.reshape(B, S, D), aux
