"""Guided velocity fields: ``weak + omega (strong - weak)`` over any method's Field (DESIGN.md).

Every guidance of seed 004 is one formula over two *branches*, each a (field, label, token
sparsity) triple:

* CFG (seed 004 Eq. 3): strong = (field, c, dense), weak = (field, null class, dense);
* AutoGuidance (Karras et al. 2024): weak = a smaller / less-trained model, conditional;
* ICG (Sadat et al. 2024): weak = the same field with a random class, redrawn per step;
* Sparse Guidance (Eq. 6-7): strong and weak = the same field, both conditional, at token
  sparsities gamma_strong < gamma_weak, masks m_k ~ Bernoulli(1 - gamma) redrawn per step and
  per branch (Sec. 3.2);
* CFG + SG (Eq. 8) and AG + SG: the weak branch sparse *and* unconditional / the AG model.

``omega (strong) + (1 - omega) (weak)`` is written ``weak + omega (strong - weak)`` so equal
branches give the branch exactly (bit for bit), whatever omega.  Guidance applies only for
t inside ``interval`` (Kynkaenniemi et al. 2024); outside it the strong branch alone answers
and the weak branch costs nothing.  The guidance plug-ins (registry kind ``"guidance"``:
``baselines/cfg.py``, ``autoguidance.py``, ``icg.py``, ``methods/sparse_guidance.py``) wrap
the method's assembled Field, so any method composes with any guidance.

``channels=k`` guides only the first k channels and takes the rest from the strong branch: the quirk of
DiT's released ``forward_with_cfg`` ("for exact reproducibility reasons, we apply classifier-free guidance
on only three channels by default"; DiT and SiT ``models.py``: ``eps, rest = model_out[:, :3],
model_out[:, 3:]``), with which DiT-XL/2's FID 2.27 and SiT-XL/2's 2.06 were measured on 4-channel
SD-VAE latents.  ``None`` (the default) guides every channel, the standard formula.

Guidance is linear, so it applies to whatever the branches answer: velocities (:meth:`Guided.velocity`),
or, for a sampler asking the native parameterisation (:meth:`Guided.predict`), DiT's eps, whose learned
variance channels come from the strong (conditional) branch as in ``forward_with_cfg``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from harness.backbones.block_drop import block_drop
from harness.backbones.token_selection import sparsity
from harness.core.errors import ConfigError
from harness.core.hashing import derived_seed
from harness.field.base import Field, batch_times
from harness.objectives.base import VELOCITY, Parameterisation, Prediction

LABELS = ("cond", "null", "random")  # the label a branch sees: given, null class (CFG), random class (ICG)


@dataclasses.dataclass
class Branch:
    """One prediction of a guided field: which field, which label, which token sparsity."""

    field: Field
    label: str = "cond"                 # cond | null | random (see LABELS)
    gamma: Optional[float] = None       # per-call token sparsity; None = the backbone's eval default
    stream: int = 0                     # mask/label random stream; equal streams draw equal masks
    drop: Optional[float] = None        # fraction of blocks skipped per call (S^2-Guidance's sub-network); None = all run

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"branch label must be one of {LABELS}, got {self.label!r}")
        if self.gamma is not None and not 0.0 <= float(self.gamma) < 1.0:
            raise ValueError(f"branch gamma must be in [0, 1), got {self.gamma}")
        if self.drop is not None and not 0.0 < float(self.drop) < 1.0:
            raise ValueError(f"branch drop must be in (0, 1), got {self.drop}")


def stream_generator(seed: int, call: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, call index, stream): masks redrawn per step and branch."""
    return torch.Generator().manual_seed(derived_seed("guidance", seed, call, stream))


class Guided(Field):
    """``weak + scale (strong - weak)`` inside ``interval``, ``strong`` outside (seed 004 Eq. 3, 7, 8).

    ``num_classes`` is needed only by a ``random``-label branch (ICG).  Each call draws the
    branches' token masks (and ICG's classes) from generators seeded by (seed, call, stream),
    so a sampling run is reproducible and masks differ between steps and between branches
    with different streams.  Masks are drawn per batch, so they depend on how samples are
    batched (the image noise and labels do not).
    """

    def __init__(self, strong: Branch, weak: Branch, scale: float, *, interval: Sequence[float] = (0.0, 1.0),
                 num_classes: int = 0, seed: int = 0, channels: Optional[int] = None) -> None:
        self.strong, self.weak, self.scale = strong, weak, float(scale)
        if channels is not None and int(channels) < 1:
            raise ConfigError(f"guidance.guide_channels must be >= 1 or null (every channel), got {channels}")
        self.channels = None if channels is None else int(channels)
        self.interval = (float(interval[0]), float(interval[1]))
        self.num_classes, self.seed = int(num_classes), int(seed)
        self.calls = 0
        if self.num_classes < 1 and {strong.label, weak.label} & {"null", "random"}:
            raise ConfigError("guidance: a null-class (CFG) or random-class (ICG) branch needs labelled data, "
                              "but the trained units have num_classes = 0", hint="use guidance=none, autoguidance or sparse")

    def combine(self, strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
        """``weak + scale (strong - weak)`` on the guided channels, ``strong`` on the others (DiT's quirk)."""
        guided = weak + self.scale * (strong - weak)
        k = self.channels
        if k is None or strong.dim() < 2 or k >= strong.shape[1]:
            return guided
        return torch.cat([guided[:, :k], strong[:, k:]], dim=1)

    @property
    def parameterisation(self) -> Parameterisation:
        """The branches' common native parameterisation; velocity when they differ (both can answer that)."""
        strong, weak = self.strong.field.parameterisation, self.weak.field.parameterisation
        return strong if strong == weak else VELOCITY

    def guided_at(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: where guidance applies (t in the closed interval)."""
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)

    def branch(self, b: Branch, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor], call: int,
               native: bool = False):
        """One branch's velocity (B, ...) with its label and sparsity for this call (its Prediction if ``native``)."""
        gen = None if x.device.type == "meta" else stream_generator(self.seed, call, b.stream)
        if b.label == "null":
            y = None
        elif b.label == "random":
            if x.device.type == "meta":
                y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            else:
                y = torch.randint(self.num_classes, (x.shape[0],), generator=gen).to(x.device)
        with sparsity(b.gamma, gen), block_drop(b.drop, gen):
            return b.field.predict(x, t, y) if native else b.field(x, t, y)

    def pools_halves(self, x: torch.Tensor, t: torch.Tensor) -> bool:
        """CFG over a field that asks for one shared batch (``shares_batch``: DiffMoE's global token
        pool, seed 002): both halves go through one forward, as the authors' ``forward_with_cfg``."""
        s, w = self.strong, self.weak
        return (bool(getattr(s.field, "shares_batch", False)) and s.field is w.field and s.gamma == w.gamma
                and {s.label, w.label} <= {"cond", "null"} and self.num_classes > 0
                and x.device.type != "meta" and bool(self.guided_at(t).all()))

    def pooled_velocity(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """Strong and weak halves stacked into one batch (2B, ...); the null class is row ``num_classes``."""
        null = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        if y is not None and y.is_floating_point():  # caption embeddings: an all-NaN item is the null caption
            null = torch.full_like(y, float("nan"))
        labels = [null if b.label == "null" or y is None else y for b in (self.strong, self.weak)]
        with sparsity(self.strong.gamma, None):
            strong, weak = self.strong.field(torch.cat([x, x]), torch.cat([t, t]), torch.cat(labels)).chunk(2)
        return self.combine(strong, weak)

    def velocity(self, x, t, y=None):
        call, self.calls = self.calls, self.calls + 1
        if self.pools_halves(x, t):
            return self.pooled_velocity(x, t, y)
        strong = self.branch(self.strong, x, t, y, call)
        on = self.guided_at(t)
        if x.device.type != "meta" and not bool(on.any()):
            return strong
        weak = self.branch(self.weak, x, t, y, call)
        guided = self.combine(strong, weak)
        if x.device.type == "meta" or bool(on.all()):
            return guided
        return torch.where(on.reshape(-1, *([1] * (x.dim() - 1))), guided, strong)

    def predict(self, x, t, y=None) -> Prediction:
        """Guidance of the branches' native answers (velocity when they differ): DiT's CFG on eps.

        The variance channels are the strong branch's (DiT's ``forward_with_cfg`` keeps the conditional half's
        ``rest``); the per-call streams are those of :meth:`velocity`, so masks and ICG classes match.
        """
        if self.parameterisation.kind == "velocity":
            return Prediction("velocity", self(x, t, y))
        t = batch_times(x, t)
        call, self.calls = self.calls, self.calls + 1
        strong = self.branch(self.strong, x, t, y, call, native=True)
        on = self.guided_at(t)
        if x.device.type != "meta" and not bool(on.any()):
            return strong
        weak = self.branch(self.weak, x, t, y, call, native=True)
        value = self.combine(strong.value, weak.value)
        if x.device.type != "meta" and not bool(on.all()):
            value = torch.where(on.reshape(-1, *([1] * (x.dim() - 1))), value, strong.value)
        return Prediction(strong.kind, value, strong.variance)
