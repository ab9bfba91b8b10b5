"""Sample sets that do not depend on batch size, process count or resumption (STYLE practice 7).

Sample i draws its initial noise (and its class label) from a generator seeded with
``base_seed + i``, as EDM2's ``StackedRandomGenerator``; so the set of 50k images is
the same on one CPU, eight GPUs, or a job resumed half-way.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from harness.field import Field


def seeded_noise_and_labels(seeds: Sequence[int], shape: Sequence[int], num_classes: int,
                            class_label: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Noise (B, *shape) and labels (B,) with sample b drawn from generator ``seeds[b]``."""
    xs, ys = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        xs.append(torch.randn(tuple(shape), generator=g))
        if num_classes > 0:
            ys.append(int(class_label) if class_label is not None else int(torch.randint(num_classes, (1,), generator=g)))
    y = torch.tensor(ys, dtype=torch.long) if num_classes > 0 else None
    return torch.stack(xs), y


def generate(field: Field, sampler: Callable, *, seeds: Sequence[int], shape: Sequence[int], num_classes: int,
             batch_size: int = 256, class_label: Optional[int] = None,
             device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], int]]:
    """Yield (samples, labels, nfe) batch by batch; the union is independent of ``batch_size``."""
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        x0, y = seeded_noise_and_labels(chunk, shape, num_classes, class_label)
        x0 = x0.to(device)
        y = None if y is None else y.to(device)
        x1, nfe = sampler(field, x0, y)
        yield x1.cpu(), None if y is None else y.cpu(), nfe


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255], rounding as EDM/ADM do."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
