"""DiffMoE (seed 002): batch-level global token pool, expert choice, capacity predictor, dynamic threshold.

Two plug-ins in one file, because they are one method:

* ``@register("ffn", "diffmoe")`` :class:`DiffMoEFFN`, the MoE layer the DiT/SiT backbone puts
  in every other block (``backbone.ffn=diffmoe backbone.ffn_every=2``; seed 002 Sec. 3.1
  "we replace even FFN layers with MoE layers", the authors' ``interleave``: blocks 1, 3, ...).
* ``@register("method", "diffmoe")`` :class:`DiffMoE`: trains the same unit as ``monolithic``
  (so the unit hash, and a finished checkpoint, are shared) and sets the *inference-only*
  choices at assembly: the threshold (dynamic EMA, or a fixed gamma for the interval search
  of Eq. 16 / Tab. 10), or static top-K without the capacity predictor (Tab. 4 "w/o").
  These live in the method node, not the backbone node, so a threshold sweep never retrains.

Training (Alg. 3): the B x S tokens of the forward batch are flattened into one pool (Eq. 4);
each expert i takes the ``k = int(B S / N * C)`` tokens with the largest router score
``softmax_E(x W_r)[:, i]`` (Eq. 5-6; softmax over experts, top-k over the pool, gates not
renormalised) and a token's output is the gate-weighted sum over the experts that took it
(Eq. 7).  The capacity predictor ``W2 SiLU(W1 sg[x])`` (Eq. 10; hidden width D as the
authors' code) learns by BCE which experts took each token (Eq. 11-13), and each expert's
threshold follows the EMA ``tau <- 0.95 tau + 0.05 q`` of the k-th largest predicted
probability q (Eq. 17), averaged over DDP ranks when a process group is initialised.

Inference (Alg. 4): expert i processes ``K_i = #{s : sigmoid(CP(x))_{s,i} > tau_i}`` tokens
(Eq. 14), so compute adapts to the pool's content (noise level, class); which K_i tokens is
the authors' choice, the top-K_i by router score (``select=router_topk``), or exactly the
tokens that passed (``select=predicted``).  Each eval forward records ``C = sum_i K_i / BS``
(Eq. 8-9) and the evaluation logs their mean, ``C_infer^avg`` (Eq. 15).  A CFG batch that
stacks its conditional and unconditional halves into one forward shares one pool, as the
authors' ``forward_with_cfg`` does.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones.moe import (ExpertBank, MoEFFN, capacity_predictor, check_capacity, check_experts,
                                   ema_threshold_update, expert_width, ffn_key, moe_layers, tokens_per_expert)
from harness.baselines.monolithic import Monolithic
from harness.core.errors import ConfigError
from harness.field import Field, Net
from harness.core.registry import register

SELECTIONS = ("router_topk", "predicted")


def check_threshold(value: float | None, key: str) -> float | None:
    """A threshold must lie in the predictor's output range [0, 1) (sigmoid; 0 lets every token pass)."""
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) < 1.0):
        raise ConfigError(f"{key} must be in [0, 1) (the capacity predictor outputs sigmoid probabilities) "
                          f"or null for the dynamic EMA threshold, got {value!r}")
    return float(value)


@register("ffn", "diffmoe")
class DiffMoEFFN(MoEFFN):
    """DiffMoE layer (seed 002 Alg. 3 and 4): global token pool, expert choice, capacity predictor."""

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *,
                 num_experts: int = 8,                 # N experts per MoE layer
                 capacity: float = 1.0,                # C_train: each expert takes int(B S / N * C) pool tokens
                 predictor_loss_weight: float = 1.0,   # weight of the BCE loss L_CP (authors' S-E16 config: 1)
                 threshold_ema: float = 0.95,          # alpha of the dynamic threshold EMA (Eq. 17)
                 expert_ratio: float | None = None,    # expert hidden width / D; None = hidden_ratio
                 ) -> None:
        super().__init__()
        n = check_experts(num_experts)
        self.nominal_capacity = check_capacity(capacity)
        if not predictor_loss_weight >= 0:
            raise ConfigError(f"{ffn_key('predictor_loss_weight')} must be >= 0, got {predictor_loss_weight!r}")
        if not 0.0 <= threshold_ema < 1.0:
            raise ConfigError(f"{ffn_key('threshold_ema')} must be in [0, 1), got {threshold_ema!r}")
        self.predictor_loss_weight, self.threshold_ema = float(predictor_loss_weight), float(threshold_ema)
        self.router = nn.Parameter(torch.empty(n, dim))                  # W_r^T (N, D), no bias
        self.experts = ExpertBank(n, dim, expert_width(dim, hidden_ratio, expert_ratio))
        self.predictor = capacity_predictor(dim, n)                        # CP, Eq. 10
        # tau (N,): a frozen parameter, not a buffer, so the trainer's weight EMA averages it as the
        # authors' update_ema averages buffers; the optimizer never touches it (no gradient).
        self.expert_threshold = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.configure_inference()
        self.init_weights()

    def init_weights(self) -> None:
        """Router N(0, 0.006^2) as the authors' code; experts as DiT's Linear; the predictor keeps DiT's init."""
        if not self.router.is_meta:
            nn.init.normal_(self.router, std=0.006)
        self.experts.reset_parameters()

    def configure_inference(self, *, threshold: float | None = None, use_predictor: bool = True,
                            inference_capacity: float | None = None, select: str = "router_topk") -> None:
        """Inference-only choices (what :class:`DiffMoE` sets from ``method.*``).

        ``threshold``: None = the dynamic EMA thresholds, else one gamma for every expert (Eq. 16);
        ``use_predictor=False``: static top-K with C = ``inference_capacity`` (default C_train), the
        training path (seed 002 Tab. 4 "w/o"); ``select``: which K_i tokens an expert takes.
        """
        self.fixed_threshold = check_threshold(threshold, "method.threshold")
        self.use_predictor = bool(use_predictor)
        self.inference_capacity = None if inference_capacity is None else check_capacity(inference_capacity,
                                                                                         "inference_capacity")
        if select not in SELECTIONS:
            raise ConfigError(f"method.select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        self.select = select

    # ---------------------------------------------------------------- routing
    def scores(self, flat: torch.Tensor) -> torch.Tensor:
        """Router probabilities ``softmax_E(x W_r)`` over experts (Eq. 1/5): (T, D) -> (T, N)."""
        return torch.softmax(flat @ self.router.t().to(flat.dtype), dim=-1)

    def pool_topk(self, probs: torch.Tensor, capacity: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each expert's top-k tokens of the whole pool (Eq. 6): probs (T, N) -> gate, index (N, k)."""
        k = tokens_per_expert(probs.shape[0], self.num_experts, capacity, "the batch-level token pool")
        return probs.t().topk(k, dim=-1)

    def _mix(self, flat: torch.Tensor, gate: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Eq. 7 for equally long selections: y = sum_i G_i E_i(x_i), gate/index (N, k) -> (T, D)."""
        N, k = index.shape
        out = self.experts(flat[index]) * gate.unsqueeze(-1).to(flat.dtype)   # (N, k, D)
        return out.new_zeros(flat.shape).index_add(0, index.reshape(-1), out.reshape(N * k, -1))

    def update_threshold(self, cp_logits: torch.Tensor, k: int) -> None:
        """Eq. 17: tau_i <- a tau_i + (1 - a) * (k-th largest sigmoid(CP)_{:, i}), rank-averaged."""
        ema_threshold_update(self.expert_threshold, cp_logits, k, self.threshold_ema)

    def thresholds(self) -> torch.Tensor:
        """tau (N,) used at inference: the fixed gamma, else the EMA thresholds."""
        if self.fixed_threshold is not None:
            return torch.full_like(self.expert_threshold, self.fixed_threshold)
        return self.expert_threshold

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict]:
        """(B, S, D) -> ((B, S, D), {"loss": weight * L_CP in training})."""
        B, S, D = x.shape
        flat = x.reshape(B * S, D)                                          # the pool (B S, D), Eq. 4
        if self.training:
            y, aux = self._forward_train(flat)
            return y.reshape(B, S, D), aux
        if not self.use_predictor or flat.is_meta:
            if flat.is_meta and self.use_predictor:  # counted from shapes: the predictor runs, experts at C_train
                self.predictor(flat)
            gate, index = self.pool_topk(self.scores(flat), self.inference_capacity or self.nominal_capacity)
            self.record_rows(index, B, S, ctx)
            return self._mix(flat, gate, index).reshape(B, S, D), {}
        return self._forward_dynamic(flat, B, S, ctx).reshape(B, S, D), {}

    def _forward_train(self, flat: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cp_logits = self.predictor(flat.detach())                           # (T, N), sg[x] (Eq. 11)
        gate, index = self.pool_topk(self.scores(flat), self.nominal_capacity)
        y = self._mix(flat, gate, index)
        routed = torch.zeros(index.shape[0], flat.shape[0], device=flat.device, dtype=cp_logits.dtype)
        routed = routed.scatter(1, index, 1.0).t()                           # O (T, N), Eq. 13
        loss = F.binary_cross_entropy_with_logits(cp_logits, routed)        # Eq. 12 for this layer
        self.update_threshold(cp_logits.detach(), index.shape[1])
        return y, ({"loss": self.predictor_loss_weight * loss} if self.predictor_loss_weight > 0 else {})

    def _forward_dynamic(self, flat: torch.Tensor, B: int, S: int, ctx: dict[str, Any] | None = None) -> torch.Tensor:
        """Alg. 4: K_i = #{s : sigmoid(CP(x))_{s,i} > tau_i}; expert i takes K_i tokens (Eq. 14)."""
        probs = self.scores(flat)                                           # (T, N)
        passes = torch.sigmoid(self.predictor(flat)) > self.thresholds().to(flat.dtype)  # (T, N)
        counts = passes.sum(0)                                              # (N,) K_i
        rows, outs = [], []
        for i, k_i in enumerate(counts.tolist()):  # every expert runs, maybe on 0 tokens
            if self.select == "router_topk":
                gate_i, idx_i = probs[:, i].topk(int(k_i))
            else:
                idx_i = passes[:, i].nonzero(as_tuple=True)[0]
                gate_i = probs[idx_i, i]
            rows.append(idx_i)
            outs.append(self.experts.one(i, flat[idx_i]) * gate_i.unsqueeze(-1).to(flat.dtype))
        rows = torch.cat(rows)
        self.record_rows(rows, B, S, ctx)
        out = torch.cat(outs)
        return out.new_zeros(flat.shape).index_add(0, rows, out)


class PooledNet(Net):
    """A :class:`Net` whose guided halves share one forward (``harness.api.guidance.Guided.pools_halves``).

    DiffMoE routes over the whole batch, so CFG's conditional and unconditional halves must
    form one token pool, as the authors' ``forward_with_cfg`` stacks them (seed 002, Sec. 2.2).
    """

    shares_batch = True


@register("method", "diffmoe")
class DiffMoE(Monolithic):
    """One DiffMoE network (the monolithic unit) with seed 002's inference-time choices.

    The unit is exactly ``monolithic``'s (same hash), so sweeping ``method.threshold``
    (``sweeps/diffmoe_threshold.yaml``) reuses one checkpoint and only re-samples.
    """

    def __init__(self, cfg: Mapping[str, Any],
                 threshold: float | None = None,       # null = dynamic EMA thresholds (Eq. 17); else gamma in [0, 1)
                 capacity_predictor: bool = True,      # false = static top-K at inference (seed 002 Tab. 4 "w/o")
                 inference_capacity: float | None = None,  # C of the static top-K; null = C_train
                 select: str = "router_topk",          # router_topk (Alg. 4, authors' code) | predicted (Eq. 14's set)
                 ) -> None:
        super().__init__(cfg)
        self.inference = dict(threshold=threshold, use_predictor=capacity_predictor,
                              inference_capacity=inference_capacity, select=select)

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        """Threshold in the predictor's range, a known selection, and a backbone that has DiffMoE layers."""
        node = cfg["method"]
        check_threshold(node.get("threshold"), "method.threshold")
        if node.get("inference_capacity") is not None and not node["inference_capacity"] > 0:
            raise ConfigError(f"method.inference_capacity must be > 0 or null, got {node['inference_capacity']!r}")
        if node.get("select", "router_topk") not in SELECTIONS:
            raise ConfigError(f"method.select must be one of {', '.join(SELECTIONS)}, got {node['select']!r}")
        backbone = cfg["backbone"]
        ffn = backbone.get("ffn")
        if ffn is None:  # a backbone without pluggable FFNs (the default UNet) would run dense, labelled DiffMoE
            raise ConfigError(f"method=diffmoe needs DiffMoE FFN layers but backbone={backbone.get('name')} has none",
                              hint="use a DiT/SiT backbone with backbone.ffn=diffmoe (e.g. experiment=diffmoe_mini_fmnist), "
                                   "or method=monolithic")
        if ffn != "diffmoe":
            raise ConfigError(f"method=diffmoe sets DiffMoE inference options but backbone.ffn={ffn}",
                              hint="set backbone.ffn=diffmoe, or use method=monolithic")
        layers = backbone.get("ffn_layers")
        if layers is not None and len(layers) == 0:
            raise ConfigError(f"method=diffmoe needs DiffMoE FFN layers but backbone.ffn_layers=[] puts none in "
                              f"backbone={backbone.get('name')}", hint="list the blocks, or set backbone.ffn_layers=null")

    def units(self):
        return {"model": super().units()["model"]}

    def assemble(self, parts) -> Field:
        model = parts["model"][0]
        for layer in moe_layers(model):
            if isinstance(layer, DiffMoEFFN):
                layer.configure_inference(**self.inference)
        return PooledNet(model, parts["model"][1])

    def describe(self) -> dict[str, Any]:
        return {"inference": dict(self.inference)}
