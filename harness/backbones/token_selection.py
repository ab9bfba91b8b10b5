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

A selector may also ask the backbone for MaskDiT's separate decoder (``decoder``, a
:class:`DecoderSpec`); the backbone then builds it after the range and ``restore`` returns
tokens of the decoder's width.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from typing import Any, Callable, Iterator

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


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """MaskDiT's decoder as a selector asks the backbone for it (Anima-Lab/MaskDiT ``models/maskdit.py``
    l. 309-331: ``decoder_depth`` DiT blocks of width ``decoder_hidden_size``, conditioned on the
    encoder's c); the layers are the backbone's, so they live there (this module cannot import them)."""

    depth: int                  # decoder blocks (MaskDiT: 8)
    dim: int                    # their token width (MaskDiT: 512)
    num_heads: int | None       # attention heads; None = the backbone's (MaskDiT: 16)


class TokenSelector(nn.Module):
    """Base of token selectors: keeps every token (the dense forward)."""

    decoder: DecoderSpec | None = None   # a separate decoder after the range (MaskDiT); None: the backbone's own blocks

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


def normalized_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, S, P) -> each patch minus its mean over its P values, over sqrt(its variance + eps).

    MAE's ``norm_pix_loss``, on by default in MaskDiT's MAE term (``train_utils/loss.py`` l. 88-94:
    unbiased ``var`` over the last dim, eps 1e-6): the reconstruction target keeps a patch's
    structure, not its brightness or contrast.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


@register("token_selector", "random_mask")
class RandomMask(RandomRoute):
    """MaskDiT-style masking (seed 004 Eq. 4): a random fraction ``gamma`` of the tokens is
    dropped before the block range and comes back after it as a learnable mask embedding
    ``e_mask`` plus the fixed 2-D sin-cos embedding of its position, never as its own activation.

    Without a decoder (``decoder_depth = 0``) the blocks before ``end`` act as MaskDiT's encoder
    and the blocks after it as its decoder: a masked token at position s re-enters as
    ``e_mask + p_s`` (the kept ones carry p_s since the patch embedding), so masked positions differ
    and gamma = 0 is exactly the dense forward.  With ``decoder_depth > 0`` the backbone adds
    MaskDiT's decoder (``models/maskdit.py`` l. 536-548): every block is the encoder, the kept
    tokens are projected to ``decoder_dim``, the masked ones filled with ``e_mask`` (of that width),
    the decoder's position embedding is added to *every* token, and ``decoder_depth`` DiT blocks run
    on all of them before the final layer -- also at gamma = 0 and in eval mode, as in MaskDiT.

    Training adds MaskDiT's MAE loss, ``mae_weight`` times the per-patch MSE of the output on the
    masked tokens against the network's input tokens (the noisy x_t patches), normalised per patch
    when ``norm_target`` (MaskDiT's default); the denoising objective sees only the visible tokens:
    the output of masked tokens is detached so their denoising error carries no gradient (MaskDiT's
    DSM-on-visible-tokens; the logged loss still averages over all pixels).
    """

    def __init__(self, gamma: float = 0.5, inference_gamma: float = 0.0, mae_weight: float = 0.1,
                 norm_target: bool = True, decoder_depth: int = 0, decoder_dim: int | None = None,
                 decoder_heads: int | None = None, dim: int | None = None,
                 positions: Callable[[int], torch.Tensor] | None = None) -> None:
        super().__init__(gamma=gamma, inference_gamma=inference_gamma)
        if float(mae_weight) < 0:
            raise ConfigError(f"backbone.token_selector_kwargs.mae_weight must be >= 0, got {mae_weight}")
        if dim is None:
            raise ConfigError("backbone.token_selector: random_mask needs the token width (dim)",
                              hint="build it through the DiT backbone, which passes hidden_size")
        self.mae_weight, self.norm_target = float(mae_weight), bool(norm_target)
        self.decoder = _decoder_spec(int(decoder_depth), decoder_dim, decoder_heads, int(dim))
        width = self.decoder.dim if self.decoder is not None else int(dim)             # width of restored tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))                       # e_mask (1, 1, width)
        nn.init.normal_(self.mask_token, std=0.02)
        # p_s of every position at that width (1, S, width); absent when built only to read the config
        self.register_buffer("pos_embed", None if positions is None else positions(width)[None], persistent=False)

    def init_weights(self) -> None:
        """Re-draw ``e_mask`` after the backbone's generic init (which visits every submodule)."""
        nn.init.normal_(self.mask_token, std=0.02)

    def restore(self, processed: torch.Tensor, x_full: torch.Tensor, state: State) -> torch.Tensor:
        """Kept tokens return processed; masked ones become ``e_mask`` (their activation is gone), with position.

        No decoder: masked tokens get ``e_mask + p_s``.  Decoder: ``p_s`` (the decoder position
        embedding) is added to every token, the kept ones included (MaskDiT l. 543-545).
        """
        if self.decoder is None and state is None:
            return processed  # gamma = 0: the very same tensor, so the forward is bit-identical to the dense one
        if self.pos_embed is None:
            raise RuntimeError("random_mask was built without the backbone's position table (positions=)")
        pos = self.pos_embed.to(processed.dtype)                                        # (1, S, width)
        base = self.mask_token.to(processed.dtype).expand(x_full.shape[0], x_full.shape[1], -1)
        if self.decoder is None:
            return super().restore(processed, base + pos, state)
        return super().restore(processed, base, state) + pos

    def finish(self, out: torch.Tensor, target: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, P) tokens: detach the masked ones and add the MAE loss on them (training only)."""
        if state is None or not self.training:
            return out, out.new_zeros(())
        masked = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device).scatter_(1, state, False)  # (B, S)
        mae = self.mae_loss(out, target, masked)
        return torch.where(masked.unsqueeze(-1), out.detach(), out), self.mae_weight * mae

    def mae_loss(self, out: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """MaskDiT's MAE term (``train_utils/loss.py`` l. 88-101): the MSE of each patch, averaged over a
        sample's masked patches (``masked`` (B, S), each row non-empty), then over the batch."""
        if self.norm_target:
            target = normalized_patches(target)
        per_patch = ((out - target) ** 2).mean(dim=-1)                                  # (B, S)
        m = masked.to(per_patch.dtype)
        return ((per_patch * m).sum(dim=1) / m.sum(dim=1)).mean()


def _decoder_spec(depth: int, width: int | None, heads: int | None, dim: int) -> DecoderSpec | None:
    """``random_mask``'s decoder options as a :class:`DecoderSpec` (None without one); one-line ConfigErrors."""
    key = "backbone.token_selector_kwargs"
    if depth < 0:
        raise ConfigError(f"{key}.decoder_depth must be >= 0, got {depth}")
    if depth == 0:
        if width is not None or heads is not None:
            raise ConfigError(f"{key}.decoder_dim / decoder_heads need decoder_depth > 0 (MaskDiT's decoder)")
        return None
    width = dim if width is None else int(width)
    if width <= 0 or width % 4:
        raise ConfigError(f"{key}.decoder_dim must be a positive multiple of 4 (2-D sin-cos embedding), got {width}")
    if heads is not None and (int(heads) <= 0 or width % int(heads)):
        raise ConfigError(f"{key}.decoder_heads must divide decoder_dim={width}, got {heads}")
    return DecoderSpec(depth, width, None if heads is None else int(heads))


def build_token_selector(name: str | None, kwargs: dict[str, Any] | None = None, *,
                         dim: int | None = None,
                         positions: Callable[[int], torch.Tensor] | None = None) -> TokenSelector | None:
    """Instantiate the registered selector ``name`` (``None`` -> no selector); one-line ConfigErrors.

    ``dim`` (the token width) and ``positions`` (the backbone's fixed position embedding at a
    given width, (S, width)) go to selectors that take them (a learnable mask embedding that
    must carry its position).
    """
    if name is None:
        return None
    try:
        cls = get("token_selector", name)
    except RegistryError as err:
        raise ConfigError(f"backbone.token_selector: {err.message}") from None
    kwargs = dict(kwargs or {})
    params = inspect.signature(cls).parameters
    for key, value in (("dim", None if dim is None else int(dim)), ("positions", positions)):
        if value is not None and key in params:
            kwargs.setdefault(key, value)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone.token_selector_kwargs: {err}") from None
