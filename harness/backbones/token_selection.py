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

import contextlib
import contextvars
from typing import Any, Iterator

import torch
from torch import nn

from harness.core.errors import ConfigError, RegistryError
from harness.core.registry import get, register

State = Any

# Per-call sparsity set by a caller that only sees a Field (Sparse Guidance, seed 004 Eq. 6):
# (gamma, generator) for every selector called inside ``with sparsity(...)``.
_SPARSITY: contextvars.ContextVar[tuple[float | None, torch.Generator | None] | None] = \
    contextvars.ContextVar("token_sparsity", default=None)


@contextlib.contextmanager
def sparsity(gamma: float | None, generator: torch.Generator | None = None) -> Iterator[None]:
    """Run selectors at ``gamma`` with masks drawn from ``generator`` inside the block.

    Guidance wraps any method's Field, which calls its networks as ``net(x, t, y)``; this
    context carries a branch's sparsity through that call to every token selector without
    changing the Field protocol.  An explicit ``gamma=`` / ``generator`` argument of the
    backbone's forward still wins.
    """
    token = _SPARSITY.set((gamma, generator))
    try:
        yield
    finally:
        _SPARSITY.reset(token)


def _context(gamma: float | None, generator: torch.Generator | None) -> tuple[float | None, torch.Generator | None]:
    """The explicit arguments, falling back to the enclosing :func:`sparsity` block."""
    ctx = _SPARSITY.get()
    if ctx is None:
        return gamma, generator
    return (ctx[0] if gamma is None else gamma), (ctx[1] if generator is None else generator)


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

    def finish(self, out: torch.Tensor, target: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """Output tokens (B, S, P) and an auxiliary training loss, given the input tokens ``target`` (B, S, P).

        ``state`` is what the last ``select`` returned.  Routing needs nothing here; masking
        (MaskDiT) uses it for its MAE loss on the masked tokens.
        """
        return out, out.new_zeros(())

    @property
    def trains_sparse(self) -> bool:
        """Whether training drops tokens (Sparse Guidance needs a model trained this way)."""
        return False


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
        gamma, _ = _context(gamma, None)
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
        gamma, generator = _context(gamma, generator)
        keep = self.kept_tokens(S, gamma)
        if keep == S:  # gamma = 0 (or < 1/S): the very same tensor, so the forward is bit-identical
            return x, None
        # drawn where the generator lives (guidance's per-step generators are CPU ones) and moved to the tokens,
        # so a sampling run draws the same masks on any device
        draw_on = generator.device if generator is not None else x.device
        scores = torch.rand(B, S, generator=generator, device=draw_on).to(x.device)   # (B, S)
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

    @property
    def trains_sparse(self) -> bool:
        return self.gamma > 0


@register("token_selector", "random_mask")
class RandomMask(RandomRoute):
    """MaskDiT-style masking (seed 004 Eq. 4): a random fraction ``gamma`` of the tokens is
    dropped before the block range and comes back after it as a learnable mask embedding
    ``e_mask``, never as its own activation.

    With ``select_blocks = [0, end)`` the blocks before ``end`` act as MaskDiT's encoder (they
    see only the kept tokens) and the blocks after it as its decoder (all tokens, masked ones
    as ``e_mask``).  Training adds MaskDiT's auxiliary MAE loss, ``mae_weight`` times the mean
    squared error of the output on the masked tokens against the network's input tokens
    (the noisy x_t patches), and the denoising objective sees only the visible tokens: the
    output of masked tokens is detached so their denoising error carries no gradient
    (MaskDiT's DSM-on-visible-tokens; the logged loss still averages over all pixels).
    """

    def __init__(self, gamma: float = 0.5, inference_gamma: float = 0.0, mae_weight: float = 0.1,
                 dim: int | None = None) -> None:
        super().__init__(gamma=gamma, inference_gamma=inference_gamma)
        if float(mae_weight) < 0:
            raise ConfigError(f"backbone.token_selector_kwargs.mae_weight must be >= 0, got {mae_weight}")
        if dim is None:
            raise ConfigError("backbone.token_selector: random_mask needs the token width (dim)",
                              hint="build it through the DiT backbone, which passes hidden_size")
        self.mae_weight = float(mae_weight)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, int(dim)))                # e_mask (1, 1, D)
        nn.init.normal_(self.mask_token, std=0.02)

    def init_weights(self) -> None:
        """Re-draw ``e_mask`` after the backbone's generic init (which visits every submodule)."""
        nn.init.normal_(self.mask_token, std=0.02)

    def restore(self, processed: torch.Tensor, x_full: torch.Tensor, state: State) -> torch.Tensor:
        """Kept tokens return processed; dropped ones become ``e_mask`` (their activation is gone)."""
        if state is None:
            return processed
        base = self.mask_token.to(processed.dtype).expand(x_full.shape[0], x_full.shape[1], -1)
        return super().restore(processed, base, state)

    def finish(self, out: torch.Tensor, target: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, P) tokens: detach the masked ones and add the MAE loss on them (training only)."""
        if state is None or not self.training:
            return out, out.new_zeros(())
        masked = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)   # (B, S)
        masked.scatter_(1, state, False)
        m = masked.unsqueeze(-1)
        mae = ((out - target) ** 2).mean(-1)[masked].mean() if bool(masked.any()) else out.new_zeros(())
        return torch.where(m, out.detach(), out), self.mae_weight * mae


def build_token_selector(name: str | None, kwargs: dict[str, Any] | None = None, *,
                         dim: int | None = None) -> TokenSelector | None:
    """Instantiate the registered selector ``name`` (``None`` -> no selector); one-line ConfigErrors.

    ``dim`` (the token width) goes to selectors that take it (a learnable mask embedding).
    """
    if name is None:
        return None
    try:
        cls = get("token_selector", name)
    except RegistryError as err:
        raise ConfigError(f"backbone.token_selector: {err.message}") from None
    import inspect

    kwargs = dict(kwargs or {})
    if dim is not None and "dim" in inspect.signature(cls).parameters:
        kwargs.setdefault("dim", int(dim))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone.token_selector_kwargs: {err}") from None
