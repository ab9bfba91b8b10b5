"""Pluggable feed-forward blocks of the transformer backbones (registry kind ``"ffn"``).

Why a registry here: DiffMoE (seed 002, Sec. 3.1) keeps the DiT architecture and only
replaces *some* FFN layers ("we replace even FFN layers with MoE layers"), and the TC/EC
baselines do the same with other routers.  Every FFN therefore shares one contract, so a
mixture-of-experts layer drops into :class:`harness.backbones.dit.DiT` without touching it:

* constructor ``cls(dim: int, hidden_ratio: float = 4.0, **kwargs)``;
* ``forward(x, ctx) -> (out, aux)`` with ``x``/``out`` of shape ``(B, S, D)``; ``ctx`` is a
  dict the backbone fills (``c``: conditioning ``(B, D)``, ``t``: ``(B,)``, ``y``,
  ``block``: block index, ``token_state``: the token selector's state or ``None``);
  ``aux`` is a dict that may carry ``aux["loss"]`` (a scalar auxiliary loss, e.g. load
  balancing), which the backbone sums into ``last_aux_loss`` after each forward.

An FFN that wants its own initialisation (rather than DiT's xavier-uniform on every
``nn.Linear``) defines ``init_weights()``; the backbone calls it after its basic init.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.core.errors import ConfigError, RegistryError
from harness.core.registry import get, register

Aux = dict[str, Any]


@register("ffn", "dense")
class DenseFFN(nn.Module):
    """DiT's MLP: Linear(D, rD) -> GELU(tanh) -> Linear(rD, D) (DiT ``Mlp`` with ``approx_gelu``)."""

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        if hidden <= 0:
            raise ConfigError(f"backbone.ffn_kwargs.hidden_ratio must give a positive width, got {hidden_ratio}")
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU(approximate="tanh")
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, Aux]:
        """(B, S, D) -> ((B, S, D), {}): a dense FFN has no auxiliary loss."""
        return self.fc2(self.drop(self.act(self.fc1(x)))), {}


@register("ffn", "swiglu")
class SwiGLUFFN(nn.Module):
    """Gated FFN ``W3 (silu(W1 x) * W2 x)`` as JiT uses (Li & He 2025).

    The hidden width is ``2/3 * hidden_ratio * D`` so the parameter count (3 matrices)
    equals the dense FFN's (2 matrices of ratio ``hidden_ratio``).
    """

    def __init__(self, dim: int, hidden_ratio: float = 4.0, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(2 * dim * hidden_ratio / 3)
        if hidden <= 0:
            raise ConfigError(f"backbone.ffn_kwargs.hidden_ratio must give a positive width, got {hidden_ratio}")
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)   # gate and value in one matmul
        self.drop = nn.Dropout(dropout)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, ctx: dict[str, Any] | None = None) -> tuple[torch.Tensor, Aux]:
        """(B, S, D) -> ((B, S, D), {})."""
        gate, value = self.w12(x).chunk(2, dim=-1)                # (B, S, H) each
        return self.w3(self.drop(nn.functional.silu(gate) * value)), {}


def build_ffn(name: str, dim: int, hidden_ratio: float, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the registered FFN ``name``; bad names or kwargs become one-line ConfigErrors.

    ``kwargs`` (the backbone's ``ffn_kwargs``) may override ``hidden_ratio``.
    """
    try:
        cls = get("ffn", name)
    except RegistryError as err:
        raise ConfigError(f"backbone.ffn: {err.message}") from None
    merged = {"hidden_ratio": hidden_ratio, **dict(kwargs or {})}
    try:
        return cls(dim=dim, **merged)
    except TypeError as err:
        raise ConfigError(f"backbone.ffn_kwargs: {err}") from None


def aux_loss(aux: Aux, like: torch.Tensor) -> torch.Tensor:
    """The scalar auxiliary loss in ``aux`` (0 if none), on ``like``'s device and dtype."""
    loss = aux.get("loss")
    if loss is None:
        return torch.zeros((), device=like.device, dtype=like.dtype)
    return loss
