"""Velocity fields: the one abstraction every method builds and every sampler consumes (DESIGN.md).

A :class:`Field` maps (x (B, ...), t (B,), y (B,) | None) -> v (B, ...) in the harness
convention (t = 0 noise, t = 1 data, v = dx/dt).  ``Mixture`` (DDM, :mod:`harness.field.mixture`)
and ``Guided`` (CFG/AG/ICG/SG, :mod:`harness.field.guided`) implement the same protocol.

A field also says what its network answers natively (:attr:`Field.parameterisation`) and answers it
(:meth:`Field.predict`): a velocity for every field, the raw eps (and learned-variance channels) for a
DDPM-trained ``Net`` and guidance around one.  A sampler that needs more than a velocity (DiT's DDPM
ancestral sampler) asks the field this, never which method built it.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from harness.core.intervals import check_boundaries
from harness.objectives.base import VELOCITY, Parameterisation, Prediction


def batch_times(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Per-sample times (B,) from a Python float, a 0-d tensor or a (B,) tensor."""
    if not torch.is_tensor(t) or t.dim() == 0:
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return t


class Field:
    """Protocol: ``field(x, t, y) -> v``; subclasses override :meth:`velocity`.

    :meth:`predict` answers in :attr:`parameterisation` (velocity unless a subclass knows better), with x on
    that parameterisation's own path at harness time t (see :class:`~harness.objectives.base.Parameterisation`).
    """

    parameterisation: Parameterisation = VELOCITY

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.velocity(x, batch_times(x, t), y)

    def predict(self, x: torch.Tensor, t: torch.Tensor | float, y: Optional[torch.Tensor] = None) -> Prediction:
        """The native answer; a field that knows no other parameterisation answers its velocity."""
        return Prediction("velocity", self(x, t, y))


class Net(Field):
    """One network behind an objective's output -> velocity conversion (monolithic, MoE)."""

    def __init__(self, model: torch.nn.Module, objective) -> None:
        self.model, self.objective = model, objective

    @property
    def parameterisation(self) -> Parameterisation:
        return getattr(self.objective, "parameterisation", VELOCITY)

    @torch.no_grad()
    def velocity(self, x, t, y=None):
        return self.objective.velocity(self.model, x, t, y)

    @torch.no_grad()
    def predict(self, x, t, y=None) -> Prediction:
        return self.objective.predict(self.model, x, batch_times(x, t), y)


class Exact(Field):
    """A closed-form velocity ``fn(x, t, y)`` (the Gaussian-mixture oracle)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def velocity(self, x, t, y=None):
        return self.fn(x, t, y)


class Piecewise(Field):
    """Expert i answers for t in [b_i, b_{i+1}) (seed 000, Sec. 3; the last interval includes t = 1).

    Each element of a batch goes to its own expert, so training-time batches with mixed t
    and sampling batches (one t) both work; an expert is only called on its elements.
    """

    def __init__(self, fields: Sequence[Field], boundaries: Sequence[float]) -> None:
        self.fields = list(fields)
        self.boundaries = check_boundaries(boundaries, len(self.fields))
        self._edges = torch.tensor(self.boundaries, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A Python-float t (every sampler step) picks its expert without a tensor round trip, so the
        field also runs on the meta device (FLOP counting from shapes)."""
        if not torch.is_tensor(t):
            import bisect

            return self.fields[bisect.bisect_right(self.boundaries, float(t))](x, t, y)
        return super().__call__(x, t, y)

    def _meta_expert(self) -> Field:
        """On the meta device t has no values (a wrapper such as guidance made it a tensor): FLOPs then come from
        shapes alone, so any expert answers when all have the same parameter shapes; otherwise it is an error."""
        shapes = [tuple(tuple(p.shape) for p in f.model.parameters()) if isinstance(f, Net) else None for f in self.fields]
        if None in shapes or len(set(shapes)) > 1:
            raise RuntimeError("Piecewise on the meta device cannot pick an expert from a value-less t, and its "
                               "experts differ in size; call it with a Python-float t")
        return self.fields[0]

    def expert_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the expert owning each t: the number of boundaries <= t."""
        return torch.bucketize(t.detach().to(torch.float64).cpu(), self._edges, right=True).to(t.device)

    def velocity(self, x, t, y=None):
        if t.device.type == "meta":
            return self._meta_expert()(x, t, y)
        idx = self.expert_index(t)
        if bool((idx == idx[0]).all()):
            return self.fields[int(idx[0])](x, t, y)
        out = torch.empty_like(x)
        for i, field in enumerate(self.fields):
            sel = (idx == i).nonzero(as_tuple=True)[0]
            if sel.numel():
                out[sel] = field(x[sel], t[sel], None if y is None else y[sel])
        return out
