"""What the mixture-of-experts FFNs (TC, EC, DiffMoE; seed 002) share: experts, accounting, statistics.

The three routers of seed 002 differ only in *which* tokens each expert processes
(Sec. 2.1-2.2); the experts themselves are N copies of DiT's FFN (Sec. 3.1: "MoE layers
containing N identical FFN components").  This module holds that common part:

* :class:`ExpertBank`: N FFNs ``Linear(D, H) -> GELU(tanh) -> Linear(H, D)`` with stacked
  weights ``(N, D, H)``, so experts that process equally many tokens run as one batched
  matmul (``baddbmm``, which FlopCounterMode counts) instead of N small ones;
* :class:`MoEFFN`: the base class: routing statistics kept in eval mode (the average
  inference capacity ``C_infer``, seed 002 Eq. 8-9 and 15, per layer, per bin of the network's
  time and per class label: Fig. 1c/d, Figs. 12-14) and activated-parameter accounting;
* the capacity predictor's pieces shared by the layers that have one (DiffMoE's global pool,
  EC's dynamic intra-sample routing): :func:`capacity_predictor` (Eq. 10), the EMA threshold
  update :func:`ema_threshold_update` (Eq. 17) and :func:`world_mean`;
* model-level helpers: :func:`activated_parameters` (exact), :func:`eq40_activated_parameters`
  (seed 002 App. C, Eq. 40), :func:`routing_metrics` / :func:`routing_curves` /
  :func:`reset_routing_stats` for the evaluation pipeline, and :func:`measured_gflops` on real
  tensors (data-dependent routing).
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


def capacity_predictor(dim: int, num_experts: int) -> nn.Sequential:
    """The capacity predictor ``W2 SiLU(W1 x)`` (seed 002 Eq. 10; hidden width D as the authors' code): (T, D) -> (T, N)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, num_experts))


def world_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over DDP ranks; the identity (and no collective call) without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


@torch.no_grad()
def ema_threshold_update(tau: torch.Tensor, cp_logits: torch.Tensor, k: int, alpha: float) -> None:
    """Eq. 17 in place: ``tau_i <- a tau_i + (1 - a) q_i``, q_i the k-th largest ``sigmoid(CP)_{:, i}``, rank-averaged.

    ``cp_logits`` (T, N) are the predictor's logits over the tokens the routing chose from, ``k`` how many
    of them each expert took, so on this batch exactly k tokens per expert would pass ``q``.
    """
    if cp_logits.is_meta:
        return
    quantile = torch.sigmoid(cp_logits.float()).topk(k, dim=0).values[-1]   # (N,)
    quantile = world_mean(quantile)
    tau.mul_(alpha).add_((1.0 - alpha) * quantile.to(tau.dtype))


T_BINS = 10   # bins of the network's time in [0, 1] for the per-t capacity curve (Fig. 1c)


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
        # per sample b of every forward: C_b = (token, expert) pairs of b's tokens / b's tokens, summed per
        # bin of the network's time and per class slot (0: no label, 1 + y: label y), with the sample counts
        self._t_sum: torch.Tensor | None = None
        self._t_count: torch.Tensor | None = None
        self._class_sum: torch.Tensor | None = None
        self._class_count: torch.Tensor | None = None

    def record_capacity(self, processed: torch.Tensor | int, pool: int) -> None:
        """Add one forward's capacity ``C = sum_i K_i / pool`` (seed 002 Eq. 8-9) in eval mode."""
        if self.training or pool == 0 or (torch.is_tensor(processed) and processed.is_meta):
            return
        value = processed.detach().double() / pool if torch.is_tensor(processed) else processed / pool
        self._capacity_sum = self._capacity_sum + value
        self._forwards += 1

    def record_rows(self, rows: torch.Tensor, batch: int, tokens: int, ctx: dict[str, Any] | None) -> None:
        """Record one eval forward from ``rows``, the pool index (in ``[0, batch * tokens)``) of every processed
        (token, expert) pair: the forward's C (Eq. 9) and, with ``ctx`` (the backbone's ``t``, ``y``), each
        sample's C_b by its time bin and class label (seed 002 Fig. 1c/d and 13-14)."""
        if self.training or rows.is_meta or batch * tokens == 0:
            return
        self.record_capacity(rows.numel(), batch * tokens)
        if ctx is None or ctx.get("t") is None:
            return
        per_sample = torch.bincount(rows.reshape(-1) // tokens, minlength=batch)[:batch].double() / tokens   # (B,)
        t = torch.as_tensor(ctx["t"], device=rows.device).detach().double().reshape(-1).expand(batch)
        t_bin = (t * T_BINS).floor().clamp(0, T_BINS - 1).long()
        y = ctx.get("y")
        slot = (torch.zeros(batch, dtype=torch.long, device=rows.device) if y is None
                else torch.as_tensor(y, device=rows.device).long().reshape(-1).expand(batch) + 1)
        ones = torch.ones(batch, dtype=torch.float64, device=rows.device)
        if self._t_sum is None:
            self._t_sum = torch.zeros(T_BINS, dtype=torch.float64, device=rows.device)
            self._t_count = torch.zeros_like(self._t_sum)
            self._class_sum = torch.zeros(0, dtype=torch.float64, device=rows.device)
            self._class_count = torch.zeros_like(self._class_sum)
        self._t_sum.index_add_(0, t_bin, per_sample)
        self._t_count.index_add_(0, t_bin, ones)
        n_slots = int(slot.max()) + 1                      # one sync per forward, only while evaluating
        if n_slots > self._class_sum.numel():
            grow = n_slots - self._class_sum.numel()
            self._class_sum = torch.cat([self._class_sum, self._class_sum.new_zeros(grow)])
            self._class_count = torch.cat([self._class_count, self._class_count.new_zeros(grow)])
        self._class_sum.index_add_(0, slot, per_sample)
        self._class_count.index_add_(0, slot, ones)

    def moe_stats(self) -> dict[str, Any]:
        """Eval-mode statistics since the last reset: ``capacity_sum`` and ``forwards`` (Eq. 15's parts), and
        per-sample sums / counts by time bin (``t_sum``, ``t_count``: T_BINS floats) and class slot
        (``class_sum``, ``class_count``: slot 0 = no label, slot 1 + y = label y)."""
        def plain(v: torch.Tensor | None) -> list[float]:
            return [] if v is None else [float(x) for x in v.cpu().tolist()]
        t_sum, t_count = plain(self._t_sum), plain(self._t_count)
        return {"capacity_sum": float(self._capacity_sum), "forwards": float(self._forwards),
                "t_sum": t_sum or [0.0] * T_BINS, "t_count": t_count or [0.0] * T_BINS,
                "class_sum": plain(self._class_sum), "class_count": plain(self._class_count)}

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


def _field_layers(field: Any) -> list[MoEFFN]:
    """Every MoE layer reachable from ``field``, in a fixed order (the same on every rank)."""
    layers: dict[int, MoEFFN] = {}
    for module in _modules_of(field):
        for layer in moe_layers(module):
            layers.setdefault(id(layer), layer)
    return list(layers.values())


def reset_routing_stats(field: Any) -> None:
    """Zero the eval-mode counters of every MoE layer reachable from ``field`` (before sampling)."""
    for layer in _field_layers(field):
        layer.reset_stats()


def _fit(values: list[float], n: int) -> list[float]:
    return (list(values) + [0.0] * n)[:n]


def routing_totals(field: Any, num_classes: int = 0) -> list[float]:
    """The parts of the routing statistics that add up over processes, flattened, so a sharded evaluation can
    sum them (``dist.all_sum``) before :func:`routing_metrics` / :func:`routing_curves` divide.

    Layout for L layers, ``T_BINS`` time bins and ``K = num_classes + 2`` class slots (none, labels 0 ..
    num_classes, the last being a backbone's null class): [sum of per-forward C, forwards] over all layers,
    then per layer [C sum, forwards], then per layer the time-bin sums and counts, then per layer the class-slot
    sums and counts.  ``num_classes`` fixes the length, so every rank sends as many numbers.
    """
    layers = _field_layers(field)
    slots = int(num_classes) + 2
    stats = [layer.moe_stats() for layer in layers]
    out = [sum(s["capacity_sum"] for s in stats), sum(s["forwards"] for s in stats)]
    for s in stats:
        out += [s["capacity_sum"], s["forwards"]]
    for s in stats:
        out += _fit(s["t_sum"], T_BINS) + _fit(s["t_count"], T_BINS)
    for s in stats:
        out += _fit(s["class_sum"], slots) + _fit(s["class_count"], slots)
    return out


def _unpack(field: Any, totals: Any, num_classes: int) -> tuple[int, float, float, list, list, list] | None:
    totals = routing_totals(field, num_classes) if totals is None else list(totals)
    n_layers, slots = len(_field_layers(field)), int(num_classes) + 2
    if not n_layers or len(totals) < 2:
        return None
    per_layer = [totals[2 + 2 * i: 4 + 2 * i] for i in range(n_layers)]
    at = 2 + 2 * n_layers
    t_parts = [totals[at + 2 * T_BINS * i: at + 2 * T_BINS * (i + 1)] for i in range(n_layers)]
    at += 2 * T_BINS * n_layers
    class_parts = [totals[at + 2 * slots * i: at + 2 * slots * (i + 1)] for i in range(n_layers)]
    return n_layers, totals[0], totals[1], per_layer, t_parts, class_parts


def routing_metrics(field: Any, totals: Any = None, num_classes: int = 0) -> dict[str, float]:
    """``moe_c_infer_avg`` (seed 002 Eq. 15 over every MoE layer and sampler call since the reset) and
    ``moe_c_infer_layer<i>`` (the same for the i-th MoE layer, in module order; Fig. 12).

    ``totals``: :func:`routing_totals` (same ``num_classes``) summed over processes (default: this
    process's).  Empty for fields without MoE layers, so the evaluation records nothing extra for them.
    """
    parts = _unpack(field, totals, num_classes)
    if parts is None or not parts[2]:
        return {}
    _, total, count, per_layer, _, _ = parts
    out = {"moe_c_infer_avg": total / count}
    for i, (c_sum, c_n) in enumerate(per_layer):
        if c_n:
            out[f"moe_c_infer_layer{i}"] = c_sum / c_n
    return out


def _ratio(sums: list[float], counts: list[float]) -> list[float | None]:
    return [s / n if n else None for s, n in zip(sums, counts)]


def routing_curves(field: Any, totals: Any = None, num_classes: int = 0) -> dict[str, Any]:
    """Inference capacity by time and by class (seed 002 Fig. 1c/d, Figs. 12-14), for a JSON artifact.

    ``C_b`` of one sample in one forward of one layer is its processed (token, expert) pairs over its
    tokens; the curves average it over samples (and layers): ``by_t`` per bin of the time the network is
    called with (``t_bins`` edges; flow matching's t, tau = 1 - t for eps objectives), ``by_class`` per label
    (``"null"`` = the backbone's null class ``num_classes``, e.g. CFG's unconditional half; ``"none"`` = called
    without labels), ``by_layer_t`` per MoE layer and bin (Fig. 12), with the sample counts behind each mean.
    Empty without MoE layers or eval forwards.
    """
    parts = _unpack(field, totals, num_classes)
    if parts is None or not parts[2]:
        return {}
    n_layers, _, _, _, t_parts, class_parts = parts
    t_sum = [sum(p[b] for p in t_parts) for b in range(T_BINS)]
    t_count = [sum(p[T_BINS + b] for p in t_parts) for b in range(T_BINS)]
    slots = int(num_classes) + 2
    c_sum = [sum(p[k] for p in class_parts) for k in range(slots)]
    c_count = [sum(p[slots + k] for p in class_parts) for k in range(slots)]
    names = ["none", *map(str, range(int(num_classes))), "null"]
    by_class = {names[k]: {"c": c_sum[k] / c_count[k], "n": c_count[k]} for k in range(slots) if c_count[k]}
    return {"t_bins": [b / T_BINS for b in range(T_BINS + 1)],
            "by_t": {"c": _ratio(t_sum, t_count), "n": t_count},
            "by_class": by_class,
            "by_layer_t": [_ratio(p[:T_BINS], p[T_BINS:]) for p in t_parts],
            "layers": n_layers}


def measured_gflops(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """GFLOPs (2 per multiply-add) of one forward on *real* tensors, per item of the batch.

    Data-dependent routing (TC loads, DiffMoE's predictor-driven capacity) cannot be counted
    on the meta device, so this runs the forward and counts what executed.
    """
    return count_call(lambda: model(x, t, y)).total / 1e9 / x.shape[0]
