"""Mixture of data-partitioned experts: ``u_t(x) = sum_k w_k(x, t) u_t^(k)(x)`` (seed 003, Eq. 1-2).

Why a module of its own: DDM (homogeneous) and heterogeneous DDM assemble the same field
from K expert fields and a router p(k | x_t, t); only the experts' objectives differ, and
those are converted to velocity before they reach here (``harness.objectives``).

The weights ``w`` come from the router's probabilities through a *mixing mode* chosen at
sampling time (seed 003, Sec. 3.1 "expert selection modes" and Sec. 7.5), so one set of
trained experts gives every row of the seed's Table 1:

* ``top1``: the most probable expert only (w one-hot);
* ``topk``: the K most probable, their probabilities renormalised to sum to 1;
* ``full``: all experts weighted by the router posterior (Eq. 1 exactly).

An expert is evaluated only on the batch elements where its weight is non-zero, so Top-1
costs one expert call per element, as the seed's compute argument assumes.

The router sees (x_t, t) only (seed 003 Eq. 2), never the label, so guidance's branches (CFG's conditional and
null halves, ICG's random class, SG's two sparsities) all route alike: the mixture keeps the weights of its last
call and reuses them when the next call brings the very same x and t tensors, unmodified, as a guided field's
second branch does.  One router forward per NFE instead of two (a DiT-B/2 router beside DiT-XL/2 experts is
~46 of ~670 GFLOPs per guided Top-1 NFE, seed 003 Sec. 6.3).  For that to be exact the router runs outside the
branches' token-sparsity and block-drop contexts: it is a separate network, not the guided one.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from harness.backbones.block_drop import block_drop
from harness.backbones.token_selection import sparsity
from harness.core.errors import ConfigError
from harness.field.base import Field

MODES = ("top1", "topk", "full")


def check_mixing(mode: str, top_k: int, n_experts: int, key: str = "method") -> None:
    """A mixing mode and its K must fit the number of experts (one-line ConfigError otherwise)."""
    if mode not in MODES:
        raise ConfigError(f"{key}.mixing: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "topk" and not 1 <= int(top_k) <= n_experts:
        raise ConfigError(f"{key}.top_k={top_k} must lie in [1, {n_experts}] (the number of experts)",
                          hint=f"set {key}.top_k to at most {key}.k")


def mixing_weights(probs: torch.Tensor, mode: str, top_k: int = 2) -> torch.Tensor:
    """Router probabilities (B, K) -> expert weights (B, K), rows summing to 1 (seed 003, Sec. 3.1).

    Ties in ``top1``/``topk`` go to the lower expert index (torch.topk on CPU is stable for
    equal values only by accident, so the argmax is taken on a tiny index-dependent bias).
    """
    if mode not in MODES:
        raise ConfigError(f"method.mixing: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "full":
        return probs / probs.sum(1, keepdim=True)
    k = 1 if mode == "top1" else int(top_k)
    tie_break = -1e-12 * torch.arange(probs.shape[1], dtype=probs.dtype, device=probs.device)
    idx = torch.topk(probs + tie_break, k, dim=1).indices                          # (B, k)
    kept = torch.zeros_like(probs).scatter(1, idx, probs.gather(1, idx))
    total = kept.sum(1, keepdim=True)
    # a row whose kept mass is 0 (a router that outputs exact zeros) falls back to uniform over the kept experts
    uniform = torch.zeros_like(probs).scatter(1, idx, 1.0 / k)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(probs.dtype).tiny), uniform)


class Router:
    """p(k | x_t, t) as probabilities (B, K) in the harness time convention (t = 1 data)."""

    num_experts: int

    def probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NetRouter(Router):
    """A trained router network: softmax of its logits (seed 003, Eq. 2); it sees (x_t, t) only."""

    def __init__(self, model: torch.nn.Module, num_experts: int) -> None:
        self.model, self.num_experts = model, int(num_experts)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with sparsity(None, None), block_drop(None):   # a guidance branch's sparsity is the experts', not the router's
            logits = self.model(x, t, None)
        if logits.dim() != 2 or logits.shape[1] != self.num_experts:
            raise ConfigError(f"method.k: the router predicts {tuple(logits.shape[1:])} clusters but there are "
                              f"{self.num_experts} experts", hint="train the router on the same clustering as the experts")
        return torch.softmax(logits.float(), dim=1).to(x.dtype)


class FunctionRouter(Router):
    """A closed-form router ``fn(x, t) -> probs`` (the Gaussian-mixture responsibilities in tests)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_experts: int) -> None:
        self.fn, self.num_experts = fn, int(num_experts)

    def probs(self, x, t):
        return self.fn(x, t).to(x.dtype)


class ThresholdRouter(Router):
    """Deterministic switch at a native-time threshold tau (seed 003, Sec. 3.3.1 and 3.3.3).

    The seed's time runs the other way (t' = 1 noise): experts ``low_noise`` answer for
    t' <= tau and ``high_noise`` for t' > tau.  In harness time t = 1 - t', so ``low_noise``
    answers for t >= 1 - tau.  Used with ``top1`` it is the seed's "Combined" row.
    """

    def __init__(self, tau: float, low_noise: int, high_noise: int, num_experts: int = 2) -> None:
        if not 0.0 <= float(tau) <= 1.0:
            raise ConfigError(f"method.threshold must lie in [0, 1], got {tau}")
        self.tau, self.low, self.high, self.num_experts = float(tau), int(low_noise), int(high_noise), int(num_experts)

    def probs(self, x, t):
        native = 1.0 - t.to(torch.float64)                                      # seed time, 1 = noise
        chosen = torch.where(native <= self.tau, self.low, self.high).to(x.device)
        return torch.nn.functional.one_hot(chosen, self.num_experts).to(x.dtype)


class Mixture(Field):
    """Router-weighted experts, u = sum_k w_k u^(k) with w from :func:`mixing_weights` (seed 003, Eq. 1)."""

    def __init__(self, fields: Sequence[Field], router: Router, mode: str = "top1", top_k: int = 2) -> None:
        self.fields = list(fields)
        if router.num_experts != len(self.fields):
            raise ConfigError(f"method.k: the router routes to {router.num_experts} experts but {len(self.fields)} "
                              "were given", hint="router and experts must come from the same clustering")
        check_mixing(mode, top_k, len(self.fields))
        self.router, self.mode, self.top_k = router, mode, int(top_k)
        self.calls = torch.zeros(len(self.fields), dtype=torch.long)   # expert evaluations per element (cost record)
        self.router_calls = 0                                              # router forwards (cost record)
        self._last: Optional[tuple] = None                                # (x, x version, t, t version, weights)

    def weights(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Expert weights (B, K) at (x, t); the last call's when x and t are the same unmodified tensors."""
        last = self._last
        if last is not None and last[0] is x and last[1] == x._version and last[2] is t and last[3] == t._version:
            return last[4]
        w = mixing_weights(self.router.probs(x, t), self.mode, self.top_k)
        self.router_calls += 1
        self._last = (x, x._version, t, t._version, w)
        return w

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = self.weights(x, t)                                                   # (B, K)
        out = torch.zeros_like(x)
        if x.device.type == "meta":   # cost counting: as many expert calls per item as the mode activates
            active = {"top1": 1, "topk": self.top_k}.get(self.mode, len(self.fields))
            for field in self.fields[:active]:
                out = out + field(x, t, y)
            return out
        for k, field in enumerate(self.fields):
            sel = (w[:, k] > 0).nonzero(as_tuple=True)[0]
            if not sel.numel():
                continue
            self.calls[k] += sel.numel()
            v = field(x[sel], t[sel], None if y is None else y[sel])
            out[sel] += w[sel, k].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype) * v
        return out
