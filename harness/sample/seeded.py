"""Sample sets that do not depend on batch size, process count or resumption (STYLE practice 7).

Sample i draws its initial noise (and its class label) from a generator seeded with
``base_seed + i``, as EDM2's ``StackedRandomGenerator``; so the set of 50k images is
the same on one CPU, eight GPUs, or a job resumed half-way.  A stochastic sampler (DDPM ancestral,
SDE: ``stochastic = True``) gets the same generators, continued after the noise and the label, as
:class:`PerSampleNoise`: its per-step noise of sample i comes from seed i alone (EDM2's ``generate_images``
passes ``rnd.randn_like`` to its sampler the same way), so rank r of N sampling the seeds r, r + N, ...
draws what one process draws.  The noise is drawn on the CPU and moved, so it does not depend on the device.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from harness.field import Field


class PerSampleNoise:
    """``randn_like(x)`` whose row b is drawn from generator b (EDM2's ``StackedRandomGenerator.randn_like``)."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"PerSampleNoise holds {len(self.generators)} generators, the batch has {x.shape[0]} rows")
        rows = [torch.randn(tuple(x.shape[1:]), generator=g) for g in self.generators]
        return torch.stack(rows).to(device=x.device, dtype=x.dtype)


def generators_of(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with its seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def seeded_noise_and_labels(seeds: Sequence[int], shape: Sequence[int], num_classes: int,
                            class_label: Optional[int] = None, generators: Optional[Sequence[torch.Generator]] = None,
                            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Noise (B, *shape) and labels (B,) with sample b drawn from generator ``seeds[b]`` (or ``generators[b]``,
    fresh ones seeded so, which are left where the label draw leaves them)."""
    xs, ys = [], []
    for g in (generators if generators is not None else generators_of(seeds)):
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
        gens = generators_of(chunk)
        x0, y = seeded_noise_and_labels(chunk, shape, num_classes, class_label, generators=gens)
        x0 = x0.to(device)
        y = None if y is None else y.to(device)
        if getattr(sampler, "stochastic", False):
            x1, nfe = sampler(field, x0, y, noise=PerSampleNoise(gens))
        else:
            x1, nfe = sampler(field, x0, y)
        yield x1.cpu(), None if y is None else y.cpu(), nfe


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255], rounding as EDM/ADM do."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
