"""Stochastic block dropping for one forward: the sub-network S^2-Guidance guides away from.

S^2-Guidance (Chen et al. 2025, arXiv 2508.12880; seed 004 Tab. 2's "+S^2 [8]" row) builds a weak
prediction from the model itself by skipping a random subset of its transformer blocks during one
forward (a skipped residual block is the identity on the token stream), redrawn at every sampling step.
Like :func:`harness.backbones.token_selection.sparsity`, the choice travels through the Field protocol
(``net(x, t, y)``) in a context block; a backbone whose class sets ``supports_block_drop = True`` reads
it (the DiT family), any other is refused by the guidance's config check.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch

_DROP: contextvars.ContextVar[tuple[float, Optional[torch.Generator]] | None] = \
    contextvars.ContextVar("block_drop", default=None)


@contextlib.contextmanager
def block_drop(ratio: Optional[float], generator: Optional[torch.Generator] = None) -> Iterator[None]:
    """Inside the block, backbones skip ``round(ratio * depth)`` blocks (at least 1, at most depth - 1)."""
    token = _DROP.set(None if not ratio else (float(ratio), generator))
    try:
        yield
    finally:
        _DROP.reset(token)


def dropped_blocks(depth: int) -> frozenset[int]:
    """Indices of the blocks this forward skips: one uniform draw without replacement, shared by the whole
    batch (one sub-network per step, as S^2's single-drop variant); empty outside :func:`block_drop`.

    Without a generator (the meta-device cost count) the draw is seeded 0: the count of skipped blocks,
    which is all the FLOPs depend on for blocks of equal cost, is the same for every draw."""
    ctx = _DROP.get()
    if ctx is None or depth < 2:
        return frozenset()
    ratio, gen = ctx
    k = min(depth - 1, max(1, round(ratio * depth)))
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    return frozenset(torch.randperm(depth, generator=gen)[:k].tolist())
