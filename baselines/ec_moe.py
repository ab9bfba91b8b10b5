"""Expert-choice MoE FFN within each sample (EC-DiT; seed 002 Sec. 2.1 and Alg. 1), the second baseline.

Every expert picks its top ``k = int(S / N * C)`` tokens *of each sample* by the router
affinity ``softmax_E(x W_r)`` (Eq. 1, softmax over experts, then top-k along the tokens),
and a token's output is the affinity-weighted sum of the experts that picked it.  Tokens
compete only with tokens of the same sample (same t and class: "local", seed 002 Tab. 8,
L2), so no balancing loss is needed and every expert processes exactly ``k`` tokens per
sample; C = 1 (``capacity``) costs what the dense FFN costs (Sec. 2.2, "EC-DiT selects
top-(S/N) tokens per sample").  Router initialised N(0, 0.006^2) as the authors' code.

Inference (``inference_routing``, seed 002 Tab. 8's two EC rows):

* ``null`` / ``static_topk`` (default; "L2: Local Static TopK Routing", FID 16.12): inference
  as training, each expert takes k tokens of every sample, so every sample costs the same;
* ``dynamic_intra_sample`` ("L2: Local Dynamic Intra-sample Routing", FID 23.74): the layer
  also trains DiffMoE's capacity predictor (Eq. 10-13: a two-layer SiLU MLP on the detached
  input, BCE against which tokens each expert took, so it never changes the EC weights'
  gradients) and its EMA thresholds (Eq. 17, the (B k)-th largest prediction of the batch, so
  on average C_infer ~ C_train).  At inference expert i takes, in each sample b separately, its
  top ``K_{b,i} = #{s in b : sigmoid(CP(x))_{s,i} > tau_i}`` tokens by router affinity: the
  capacity varies per sample (its noise level and class) but tokens still never leave their
  sample -- the predictor's dynamic capacity without DiffMoE's cross-sample pool (Tab. 8 L3).
  The seed gives no further detail of this row; the predictor and threshold are taken as
  DiffMoE's.  The predictor's parameters make the unit different from the static one (its own
  hash; DiT's init draws them, so the EC weights are not bitwise the static unit's).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones.moe import (ExpertBank, MoEFFN, capacity_predictor, check_capacity, check_experts,
                                   ema_threshold_update, expert_width, ffn_key, tokens_per_expert)
from harness.core.errors import ConfigError
from harness.core.registry import register

INFERENCE_ROUTINGS = ("static_topk", "dynamic_intra_sample")


def check_inference_routing(value: str | None) -> str:
    """``backbone.ffn_kwargs.inference_routing``: null (= static_topk) or one of :data:`INFERENCE_ROUTINGS`."""
    if value is None:
        return "static_topk"
    if value not in INFERENCE_ROUTINGS:
        raise ConfigError(f"{ffn_key('inference_routing')} must be null or one of {', '.join(INFERENCE_ROUTINGS)} "
                          f"(seed 002 Tab. 8), got {value!r}")
    return value


@register("ffn", "ec_moe")
class ExpertChoiceMoE(MoEFFN):
    """EC-MoE layer: each expert takes its top-k tokens within each sample."""

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *,
                 num_experts: int = 8,                 # N experts per MoE layer
                 capacity: float = 1.0,                # C: each expert takes int(S / N * C) tokens per sample
                 expert_ratio: float | None = None,    # expert hidden width / D; None = hidden_ratio
                 inference_routing: str | None = None,  # null/static_topk | dynamic_intra_sample (Tab. 8)
                 threshold_ema: float = 0.95,          # alpha of the dynamic threshold EMA (Eq. 17; dynamic only)
                 ) -> None:
        super().__init__()
        n = check_experts(num_experts)
        self.nominal_capacity = check_capacity(capacity)
        self.inference_routing = check_inference_routing(inference_routing)
        if not 0.0 <= threshold_ema < 1.0:
            raise ConfigError(f"{ffn_key('threshold_ema')} must be in [0, 1), got {threshold_ema!r}")
        self.threshold_ema = float(threshold_ema)
        self.router = nn.Parameter(torch.empty(n, dim))                  # W_r^T (N, D), no bias
        self.experts = ExpertBank(n, dim, expert_width(dim, hidden_ratio, expert_ratio))
        if self.dynamic:
            self.predictor = capacity_predictor(dim, n)
            self.expert_threshold = nn.Parameter(torch.zeros(n), requires_grad=False)   # tau (N,), as DiffMoE's
        self.init_weights()

    @classmethod
    def check_params(cls, **kwargs: Any) -> None:
        """Value checks ``harness validate`` runs without building the backbone."""
        check_inference_routing(kwargs.get("inference_routing"))

    @property
    def dynamic(self) -> bool:
        return self.inference_routing == "dynamic_intra_sample"

    def init_weights(self) -> None:
        if not self.router.is_meta:
            nn.init.normal_(self.router, std=0.006)
        self.experts.reset_parameters()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, D) -> gate (B, N, k) affinities and index (B, N, k) of each expert's tokens per sample."""
        B, S, _ = x.shape
        k = tokens_per_expert(S, self.num_experts, self.nominal_capacity, "each sample")
        return self.affinity(x).transpose(1, 2).topk(k, dim=-1)            # (B, N, k) each

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """Router affinities ``softmax_E(x W_r)`` (Eq. 1): (B, S, D) -> (B, S, N)."""
        return torch.softmax(x @ self.router.t().to(x.dtype), dim=-1)

    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict]:
        """(B, S, D) -> ((B, S, D), {"loss": L_CP in training with dynamic routing, else nothing})."""
        B, S, D = x.shape
        if self.dynamic and not self.training and not x.is_meta:
            return self._forward_dynamic(x, ctx), {}
        gate, index = self.route(x)                                         # (B, N, k)
        N, k = self.num_experts, index.shape[-1]
        rows = (index + torch.arange(B, device=x.device).view(B, 1, 1) * S).transpose(0, 1).reshape(N, B * k)
        flat = x.reshape(B * S, D)
        out = self.experts(flat[rows])                                      # (N, B k, D)
        out = out * gate.transpose(0, 1).reshape(N, B * k, 1).to(out.dtype)
        y = out.new_zeros(B * S, D).index_add(0, rows.reshape(-1), out.reshape(N * B * k, D))
        self.record_rows(rows, B, S, ctx)
        aux: dict = {}
        if self.dynamic:
            cp_logits = self.predictor(flat.detach())                       # (B S, N), sg[x] (Eq. 11); on meta too
            if self.training:
                routed = torch.zeros(N, B * S, device=x.device, dtype=cp_logits.dtype).scatter(1, rows, 1.0).t()
                aux["loss"] = F.binary_cross_entropy_with_logits(cp_logits, routed)   # Eq. 12, per-sample targets
                ema_threshold_update(self.expert_threshold, cp_logits.detach(), B * k, self.threshold_ema)
        return y.reshape(B, S, D), aux

    def _forward_dynamic(self, x: torch.Tensor, ctx: dict[str, Any] | None) -> torch.Tensor:
        """Expert i takes, within each sample b, its top K_{b,i} tokens, K_{b,i} = #{s in b: sigmoid(CP)_{s,i} > tau_i}."""
        B, S, D = x.shape
        flat = x.reshape(B * S, D)
        probs = self.affinity(x)                                            # (B, S, N)
        passes = torch.sigmoid(self.predictor(flat)).reshape(B, S, -1) > self.expert_threshold.to(x.dtype)
        counts = passes.sum(1)                                              # (B, N) K_{b,i}
        order = probs.argsort(dim=1, descending=True)                       # (B, S, N) tokens by affinity, per expert
        rank = torch.arange(S, device=x.device).view(1, S, 1)
        take = rank < counts.unsqueeze(1)                                   # (B, S, N): the first K_{b,i} of each list
        rows_all, outs = [], []
        for i in range(self.num_experts):  # every expert runs, maybe on 0 tokens
            b, r = take[:, :, i].nonzero(as_tuple=True)
            s = order[b, r, i]
            rows = b * S + s
            gate = probs[b, s, i]
            rows_all.append(rows)
            outs.append(self.experts.one(i, flat[rows]) * gate.unsqueeze(-1).to(flat.dtype))
        rows = torch.cat(rows_all)
        self.record_rows(rows, B, S, ctx)
        out = torch.cat(outs)
        return out.new_zeros(flat.shape).index_add(0, rows, out).reshape(B, S, D)
