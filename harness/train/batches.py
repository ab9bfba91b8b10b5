"""Which items form step k's batch, and how a process gets its slice of it (DESIGN.md "Training").

Step k's global batch is a function of (seed, k) alone (:func:`step_generator`): the item indices,
the noise, the times, the label drops and (``data.hflip``) the horizontal flips are drawn from one
generator in that order, so a run resumed at step k, a DDP rank, or a DataLoader worker all see the
same batch; without ``data.hflip`` nothing more is drawn, so those batches are unchanged.  Rank r trains on
positions ``[r * B / N, (r + 1) * B / N)`` of it.

Two ways to fetch the items, with identical batches:

* in process (``train.workers = 0``, the default): ``dataset.get_batch(indices)`` each step;
* a ``torch.utils.data.DataLoader`` (``train.workers > 0``): worker processes fetch the rank's
  indices ahead of time (``prefetch_factor`` steps each), into pinned memory on CUDA.  The indices
  come from :class:`StepSampler`, which recomputes step k's draw, so the workers never decide
  anything: the number of workers changes speed, not batches.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from harness.core.errors import ConfigError
from harness.core.hashing import derived_seed


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): resumption and DDP need nothing else."""
    return torch.Generator().manual_seed(derived_seed("harness", seed, step))


def step_indices(n_items: int, step: int, *, seed: int, batch_size: int) -> tuple[torch.Generator, torch.Tensor]:
    """Step ``step``'s global item indices (batch_size,) and the generator, positioned after drawing them."""
    g = step_generator(seed, step)
    return g, torch.randint(n_items, (batch_size,), generator=g)


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def draw_rest(g: torch.Generator, shape: tuple[int, ...], *, batch_size: int, interval: tuple[float, float],
              objective, label_dropout: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch's noise (B, *shape), times t (B,) and label-drop mask (B,), drawn after its indices."""
    noise = torch.randn((batch_size, *shape), generator=g, dtype=dtype)
    t = objective.sample_t(torch.rand(batch_size, generator=g, dtype=torch.float64), interval).to(dtype)
    drop = torch.rand(batch_size, generator=g) < label_dropout
    return noise, t, drop


def apply_label_dropout(y: torch.Tensor, drop: torch.Tensor, num_classes: int) -> Optional[torch.Tensor]:
    """Dropped labels become the null class ``num_classes`` (CFG training); unlabelled data: None.

    Caption embeddings (float y, (B, L, text_dim)): a dropped item becomes all-NaN, which the text
    backbone replaces by its learned null caption (seed 003 App.: p_cfg = 0.1 with learned null
    embeddings; the null is the model's parameter, so the trainer can only mark the item).
    """
    if y is not None and y.is_floating_point():
        return torch.where(drop.to(y.device).view(-1, *([1] * (y.dim() - 1))), torch.full_like(y, float("nan")), y)
    if num_classes <= 0:
        return None
    return torch.where(drop, torch.full_like(y, num_classes), y)


def draw_flips(g: torch.Generator, batch_size: int) -> torch.Tensor:
    """Which items of the global batch are flipped left-right (B,) bool, p = 1/2 each; drawn last."""
    return torch.rand(batch_size, generator=g) < 0.5


def apply_hflip(x1: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the last (width) axis of the flagged items: (B, C, H, W) images or latents."""
    if x1.dim() < 3:
        raise ConfigError(f"data.hflip needs image-shaped items (C, H, W), got items of shape {tuple(x1.shape[1:])}",
                          hint="set data.hflip=false for vector data")
    mask = flips.to(x1.device).view(-1, *([1] * (x1.dim() - 1)))
    return torch.where(mask, x1.flip(-1), x1)


def draw_batch(dataset, step: int, *, seed: int, batch_size: int, interval: tuple[float, float], objective,
               label_dropout: float, rank: int = 0, world: int = 1, hflip: bool = False):
    """The global batch of one step (same on every rank), then this rank's slice: (x1, noise, t, y).

    ``hflip`` (``data.hflip``, seed 002's recipe): each item is mirrored left-right with probability 1/2,
    drawn from the step's generator after everything else.
    """
    g, idx = step_indices(len(dataset), step, seed=seed, batch_size=batch_size)
    x1, y = dataset.get_batch(idx)
    noise, t, drop = draw_rest(g, tuple(x1.shape[1:]), batch_size=batch_size, interval=interval, objective=objective,
                               label_dropout=label_dropout, dtype=x1.dtype)
    y = apply_label_dropout(y, drop, dataset.num_classes)
    sl = rank_slice(batch_size, rank, world)
    if hflip:
        x1 = apply_hflip(x1, draw_flips(g, batch_size))
    return x1[sl], noise[sl], t[sl], None if y is None else y[sl]


class StepSampler(torch.utils.data.Sampler):
    """Yields this rank's item indices of steps ``start .. end - 1`` (a batch sampler for the DataLoader)."""

    def __init__(self, n_items: int, *, seed: int, batch_size: int, start: int, end: int, rank: int, world: int) -> None:
        self.n_items, self.seed, self.batch_size = int(n_items), int(seed), int(batch_size)
        self.start, self.end, self.sl = int(start), int(end), rank_slice(batch_size, rank, world)

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            _, idx = step_indices(self.n_items, step, seed=self.seed, batch_size=self.batch_size)
            yield idx[self.sl].tolist()


class _Items(torch.utils.data.Dataset):
    """A harness dataset seen by the DataLoader: a list of indices is fetched with one ``get_batch``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.get_batch(torch.tensor(idx, dtype=torch.long))


def _identity(batch: Any) -> Any:
    return batch


def item_loader(dataset, *, seed: int, batch_size: int, start: int, end: int, rank: int, world: int, workers: int,
                pin_memory: bool, prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader yielding (x1, y) of this rank's slice for steps ``start .. end - 1``, in step order."""
    sampler = StepSampler(len(dataset), seed=seed, batch_size=batch_size, start=start, end=end, rank=rank, world=world)
    return torch.utils.data.DataLoader(_Items(dataset), batch_sampler=sampler, num_workers=int(workers),
                                       collate_fn=_identity, pin_memory=pin_memory, prefetch_factor=int(prefetch),
                                       persistent_workers=False)


def rank_batches(dataset, *, seed: int, batch_size: int, interval: tuple[float, float], objective, label_dropout: float,
                 start: int, end: int, rank: int, world: int, workers: int = 0,
                 pin_memory: bool = False, hflip: bool = False) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]]:
    """(step, (x1, noise, t, y)) of this rank for steps ``start .. end - 1``: the same tensors for any ``workers``."""
    sl = rank_slice(batch_size, rank, world)
    shape = tuple(dataset.shape)
    if workers <= 0:
        for step in range(start, end):
            yield step, draw_batch(dataset, step, seed=seed, batch_size=batch_size, interval=interval,
                                   objective=objective, label_dropout=label_dropout, rank=rank, world=world,
                                   hflip=hflip)
        return
    loader = item_loader(dataset, seed=seed, batch_size=batch_size, start=start, end=end, rank=rank, world=world,
                         workers=workers, pin_memory=pin_memory)
    for step, (x1, y) in zip(range(start, end), loader):
        g, _ = step_indices(len(dataset), step, seed=seed, batch_size=batch_size)
        noise, t, drop = draw_rest(g, shape, batch_size=batch_size, interval=interval, objective=objective,
                                   label_dropout=label_dropout, dtype=x1.dtype)
        if hflip:
            x1 = apply_hflip(x1, draw_flips(g, batch_size)[sl])
        yield step, (x1, noise[sl], t[sl], apply_label_dropout(y, drop[sl], dataset.num_classes))
