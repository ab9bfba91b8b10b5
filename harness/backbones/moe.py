"""What the mixture-of-experts FFNs (TC, EC, DiffMoE; seed 002) share: experts, accounting, statistics.

The three routers of seed 002 differ only in *which* tokens each expert processes
(Sec. 2.1-2.2); the experts themselves are N copies of DiT's FFN (Sec. 3.1: "MoE layers
containing N identical FFN components").  This module holds that common part:

* :class:`ExpertBank`: N FFNs ``Linear(D, H) -> GELU(tanh) -> Linear(H, D)`` with stacked
  weights ``(N, D, H)``, so experts that process equally many tokens run as one batched
  matmul (``baddbmm``, which FlopCounterMode counts) instead of N small ones;
* :class:`MoEFFN`: the base class: routing statistics kept in eval mode (the average
  inference capacity ``C_infer``, seed 002 Eq. 8-9 and 15) and activated-parameter
  accounting;
* model-level helpers: :func:`activated_parameters` (exact), :func:`eq40_activated_parameters`
  (seed 002 App. C, Eq. 40), :func:`routing_metrics` / :func:`reset_routing_stats` for the
  evaluation pipeline, and :func:`measured_gflops` on real tensors (data-dependent routing).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones.flops import count_call
from harness.core.errors import ConfigError


def ffn_key(key: str) -> str:
    """The config key an FFN argument comes from (errors name it)."""
    return f"backbone.ffn_kwargs.{key}"


def expert_width(dim: int, hidden_ratio: float, expert_ratio: float | None) -> int:
    """Hidden width H of one expert: ``D * expert_ratio`` (default ``hidden_ratio``, seed 002's full FFN).

    A ratio that does not give a positive whole number of units for this backbone width is a
    one-line ConfigError rather than a silently truncated expert.
    """
    ratio = hidden_ratio if expert_ratio is None else expert_ratio
    key = "hidden_ratio" if expert_ratio is None else "expert_ratio"
    width = dim * float(ratio)
    if width < 1 or abs(width - round(width)) > 1e-6:
        raise ConfigError(f"{ffn_key(key)}={ratio} gives an expert width of {width:g} for backbone width {dim}; "
                          f"choose a ratio that makes {dim} x ratio a positive whole number")
    return int(round(width))


def check_experts(num_experts: int) -> int:
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ConfigError(f"{ffn_key('num_experts')} must be an integer >= 1, got {num_experts!r}")
    return num_experts


def check_capacity(value: float, key: str = "capacity") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{ffn_key(key)} must be > 0 (1 = the dense FFN's compute), got {value!r}")
    return float(value)


def tokens_per_expert(tokens: int, num_experts: int, capacity: float, what: str) -> int:
    """``k = int(tokens / N * C)`` (seed 002, Alg. 1 and 3); fewer than one token is a ConfigError."""
    k = int(tokens / num_experts * capacity)
    if k < 1:
        raise ConfigError(f"{ffn_key('num_experts')}={num_experts} at capacity {capacity:g} leaves no token per expert: "
                          f"{what} has only {tokens} tokens; use fewer experts or a larger capacity")
    return min(k, tokens)


class ExpertBank(nn.Module):
    """N DiT FFNs with stacked weights: ``w1`` (N, D, H), ``w2`` (N, H, D) (seed 002 Sec. 3.1)."""

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert as DiT initialises an ``nn.Linear``: xavier-uniform weights, zero biases."""
        if self.w1.is_meta:
            return
        with torch.no_grad():
            for w, (fan_in, fan_out) in ((self.w1, (self.dim, self.hidden)), (self.w2, (self.hidden, self.dim))):
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w.uniform_(-bound, bound)
            self.b1.zero_()
            self.b2.zero_()

    def expert_parameters(self) -> int:
        """Parameters of one expert: ``2 D H + H + D``."""
        return 2 * self.dim * self.hidden + self.hidden + self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on its own equally long token list: (N, k, D) -> (N, k, D)."""
        h = F.gelu(torch.baddbmm(self.b1.unsqueeze(1).to(x.dtype), x, self.w1.to(x.dtype)), approximate="tanh")
        return torch.baddbmm(self.b2.unsqueeze(1).to(x.dtype), h, self.w2.to(x.dtype))

    def one(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``i`` on a token list of any length: (k, D) -> (k, D)."""
        h = F.gelu(torch.addmm(self.b1[i].to(x.dtype), x, self.w1[i].to(x.dtype)), approximate="tanh")
        return torch.addmm(self.b2[i].to(x.dtype), h, self.w2[i].to(x.dtype))


class MoEFFN(nn.Module):
    """Base of the MoE FFNs: an :class:`ExpertBank`, eval-mode capacity statistics, accounting.

    Subclasses set ``self.experts`` and ``self.nominal_capacity`` (experts per token on
    average during training: TC's top-K, EC's and DiffMoE's C_train) and call
    :meth:`record_capacity` once per eval-mode forward with the number of (token, expert)
    pairs processed, so ``C = processed / pool`` is seed 002's Eq. 9 for that layer and step.
    """

    experts: ExpertBank
    nominal_capacity: float = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.reset_stats()

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    # ---------------------------------------------------------------- statistics (eval mode)
    def reset_stats(self) -> None:
        self._capacity_sum: torch.Tensor | float = 0.0
        self._forwards = 0

    def record_capacity(self, processed: torch.Tensor | int, pool: int) -> None:
        """Add one forward's capacity ``C = sum_i K_i / pool`` (seed 002 Eq. 8-9) in eval mode."""
        if self.training or pool == 0 or (torch.is_tensor(processed) and processed.is_meta):
            return
        value = processed.detach().double() / pool if torch.is_tensor(processed) else processed / pool
        self._capacity_sum = self._capacity_sum + value
        self._forwards += 1

    def moe_stats(self) -> dict[str, float]:
        """``{"capacity_sum", "forwards"}`` since the last reset (eval-mode forwards only)."""
        return {"capacity_sum": float(self._capacity_sum), "forwards": float(self._forwards)}

    # ---------------------------------------------------------------- accounting
    def router_parameters(self) -> int:
        """Parameters every token uses (router, capacity predictor): everything but the experts."""
        return sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.experts.parameters())

    def activated_parameters(self, capacity: float | None = None) -> float:
        """Parameters one token activates on average: router part + ``C`` experts (seed 002 Eq. 8)."""
        c = self.nominal_capacity if capacity is None else capacity
        return self.router_parameters() + c * self.experts.expert_parameters()


# -------------------------------------------------------------------- model-level helpers
def moe_layers(model: nn.Module) -> list[MoEFFN]:
    """Every MoE FFN inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoEFFN)]


def activated_parameters(model: nn.Module, capacity: float | None = None) -> float:
    """Parameters a token activates on average (exact): dense parts + each MoE layer's share.

    ``capacity`` overrides every layer's nominal capacity (e.g. a measured C_infer).
    """
    total = float(sum(p.numel() for p in model.parameters()))
    for layer in moe_layers(model):
        total -= sum(p.numel() for p in layer.parameters()) - layer.activated_parameters(capacity)
    return total


def _ffn_modules(model: nn.Module) -> list[nn.Module]:
    """The FFN module of every transformer block (dense or MoE): a block's ``ffn`` attribute."""
    return [m.ffn for m in model.modules() if isinstance(getattr(m, "ffn", None), nn.Module)]


def eq40_activated_parameters(model: nn.Module, capacity: float = 1.0) -> float:
    """Seed 002 App. C, Eq. 40: ``(1 + C) / (1 + N_E) * #FFN + #rest``.

    ``#FFN`` counts every block's FFN (dense FFNs, experts, routers and capacity
    predictors, as seed 002 Tab. 9 does).  The approximation is exact, up to the routers,
    only when every other block is MoE (one dense FFN per MoE FFN), the seed's layout;
    :func:`activated_parameters` is the exact count.
    """
    layers = moe_layers(model)
    if not layers:
        return float(sum(p.numel() for p in model.parameters()))
    n_experts = layers[0].num_experts
    ffn = sum(p.numel() for m in _ffn_modules(model) for p in m.parameters())
    rest = sum(p.numel() for p in model.parameters()) - ffn
    return (1 + capacity) / (1 + n_experts) * ffn + rest


def _modules_of(obj: Any, seen: set[int] | None = None) -> Iterator[nn.Module]:
    """nn.Modules reachable from a Field (``Net.model``, ``Piecewise.fields``, guided pairs, ...)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _modules_of(item, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)):
        for value in vars(obj).values():
            if isinstance(value, (nn.Module, list, tuple)) or type(value).__module__.startswith("harness"):
                yield from _modules_of(value, seen)


def reset_routing_stats(field: Any) -> None:
    """Zero the eval-mode counters of every MoE layer reachable from ``field`` (before sampling)."""
    for module in _modules_of(field):
        for layer in moe_layers(module):
            layer.reset_stats()


def routing_totals(field: Any) -> tuple[float, float]:
    """(sum of per-forward capacities, forwards) over every MoE layer since the reset: the parts of Eq. 15
    that add up over processes, so a sharded evaluation can sum them before dividing."""
    total, count = 0.0, 0.0
    for module in _modules_of(field):
        for layer in moe_layers(module):
            stats = layer.moe_stats()
            total += stats["capacity_sum"]
            count += stats["forwards"]
    return total, count


def routing_metrics(field: Any, totals: tuple[float, float] | None = None) -> dict[str, float]:
    """``{"moe_c_infer_avg": ...}``: seed 002 Eq. 15 over every MoE layer and sampler call since the reset.

    ``totals``: :func:`routing_totals` summed over processes (default: this process's).  Empty for fields
    without MoE layers, so the evaluation records nothing extra for them.
    """
    total, count = routing_totals(field) if totals is None else totals
    return {"moe_c_infer_avg": total / count} if count else {}


def measured_gflops(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """GFLOPs (2 per multiply-add) of one forward on *real* tensors, per item of the batch.

    Data-dependent routing (TC loads, DiffMoE's predictor-driven capacity) cannot be counted
    on the meta device, so this runs the forward and counts what executed.
    """
    return count_call(lambda: model(x, t, y)).total / 1e9 / x.shape[0]
