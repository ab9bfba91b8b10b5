"""Token selection around a block range of a transformer (registry kind ``"token_selector"``).

Sparse Guidance (seed 004, Sec. 3.1) evaluates one network at two token sparsities
gamma_strong < gamma_weak.  Its two sparse training schemes differ only in what happens to
the tokens that skip a range of layers L_i..L_j:

* routing (TREAD, seed 004 Eq. 5): a subset bypasses the range through the identity and is
  re-inserted unchanged afterwards;
* masking (MaskDiT, seed 004 Eq. 4): the dropped tokens are replaced by a mask embedding.

Both fit one protocol, so the backbone (:class:`harness.backbones.dit.DiT`) only calls

* ``select(x, generator=None, *, gamma=None) -> (kept, state)``: ``x`` (B, S, D) ->
  ``kept`` (B, S', D) plus whatever ``restore`` needs;
* ``restore(processed, x_full, state) -> (B, S, D)``: ``processed`` (B, S', D) is ``kept``
  after the block range, ``x_full`` the input of ``select``.

``gamma`` is the fraction of tokens that skip the range.  A selector uses ``gamma`` while
training and ``inference_gamma`` in eval mode (TREAD trains sparse and samples dense); a
per-call ``gamma=`` (what Sparse Guidance passes for its two branches) overrides both.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError, RegistryError
from harness.registry import get, register

State = Any


class TokenSelector(nn.Module):
    """Base of token selectors: keeps every token (the dense forward)."""

    def select(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
               gamma: float | None = None) -> tuple[torch.Tensor, State]:
        """(B, S, D) -> (kept (B, S', D), state)."""
        return x, None

    def restore(self, processed: torch.Tensor, x_full: torch.Tensor, state: State) -> torch.Tensor:
        """(B, S', D), (B, S, D) -> (B, S, D)."""
        return processed

    def kept_tokens(self, num_tokens: int, gamma: float | None = None) -> int:
        """How many of ``num_tokens`` tokens go through the block range (for FLOP hand counts)."""
        return num_tokens


@register("token_selector", "identity")
class IdentitySelector(TokenSelector):
    """No sparsity: ``select`` returns ``x`` itself, so the forward is exactly the dense one."""


def num_routed(num_tokens: int, gamma: float) -> int:
    """Tokens that skip the range: ``floor(S * gamma)``, as TREAD's router counts them."""
    return int(num_tokens * gamma)


@register("token_selector", "random_route")
class RandomRoute(TokenSelector):
    """TREAD-style routing (seed 004 Eq. 5): a uniformly random fraction ``gamma`` of each
    sample's tokens bypasses the block range and rejoins unchanged.

    Every sample gets its own random subset of exactly ``floor(S * gamma)`` routed tokens (a
    fixed count keeps the batch rectangular; seed 004 draws m_k ~ Bernoulli(1 - gamma),
    whose expected count is the same).  Kept tokens stay in their original order.
    """

    def __init__(self, gamma: float = 0.5, inference_gamma: float = 0.0) -> None:
        super().__init__()
        for key, value in (("gamma", gamma), ("inference_gamma", inference_gamma)):
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"backbone.token_selector_kwargs.{key} must be in [0, 1), got {value}")
        self.gamma = float(gamma)
        self.inference_gamma = float(inference_gamma)

    def active_gamma(self, gamma: float | None = None) -> float:
        """The per-call override, else ``gamma`` in training mode and ``inference_gamma`` in eval."""
        if gamma is not None:
            if not 0.0 <= float(gamma) < 1.0:
                raise ValueError(f"token sparsity gamma must be in [0, 1), got {gamma}")
            return float(gamma)
        return self.gamma if self.training else self.inference_gamma

    def kept_tokens(self, num_tokens: int, gamma: float | None = None) -> int:
        """``S - floor(S * gamma)`` tokens go through the range."""
        return num_tokens - num_routed(num_tokens, self.active_gamma(gamma))

    def select(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
               gamma: float | None = None) -> tuple[torch.Tensor, State]:
        """(B, S, D) -> (kept (B, S', D), ids_keep (B, S') or None when nothing is routed)."""
        B, S, D = x.shape
        keep = self.kept_tokens(S, gamma)
        if keep == S:  # gamma = 0 (or < 1/S): the very same tensor, so the forward is bit-identical
            return x, None
        scores = torch.rand(B, S, generator=generator, device=x.device)       # (B, S)
        ids_keep = scores.argsort(dim=1)[:, :keep].sort(dim=1).values          # (B, S')
        kept = x.gather(1, ids_keep.unsqueeze(-1).expand(B, keep, D))           # (B, S', D)
        return kept, ids_keep

    def restore(self, processed: torch.Tensor, x_full: torch.Tensor, state: State) -> torch.Tensor:
        """Scatter the processed tokens back among the routed ones, which keep their input value."""
        if state is None:
            return processed
        ids_keep = state                                                       # (B, S')
        index = ids_keep.unsqueeze(-1).expand(-1, -1, x_full.shape[-1])        # (B, S', D)
        return x_full.scatter(1, index, processed)                             # routed tokens = x_full


def build_token_selector(name: str | None, kwargs: dict[str, Any] | None = None) -> TokenSelector | None:
    """Instantiate the registered selector ``name`` (``None`` -> no selector); one-line ConfigErrors."""
    if name is None:
        return None
    try:
        cls = get("token_selector", name)
    except RegistryError as err:
        raise ConfigError(f"backbone.token_selector: {err.message}") from None
    try:
        return cls(**dict(kwargs or {}))
    except TypeError as err:
        raise ConfigError(f"backbone.token_selector_kwargs: {err}") from None
