"""Sampling a text model from caption indices: integer y -> caption embeddings (B, L, E), None stays None.

Why: the samplers and seeded generation draw integer labels (``harness.sample.seeded``); a
text-conditioned backbone reads caption embeddings.  Wrapping its field with the table of
captions to sample from (the CPU twin's one caption per class, or held-out prompt embeddings)
keeps every sampler and guidance unchanged; CFG's unconditional branch passes y = None, which
the backbone turns into its learned null caption (seed 003 Sec. 2.5).
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.field.base import Field


class CaptionConditioned(Field):
    """``field`` with integer conditions looked up in ``table`` (K, L, E); float or None conditions pass through.

    An index >= K is the harness's null class (``num_classes``, as CFG's pooled halves pass it): it becomes
    the all-NaN item the text backbone replaces by its learned null caption.
    """

    def __init__(self, field: Field, table: torch.Tensor) -> None:
        self.field, self.table = field, table.to(torch.float32)

    @property
    def parameterisation(self):
        return self.field.parameterisation

    def __getattr__(self, name: str):
        if name in ("field", "table"):
            raise AttributeError(name)
        return getattr(self.field, name)

    def caption(self, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if y is None or y.is_floating_point():
            return y
        table = self.table.to(y.device)
        y = y.long()
        null = y >= len(table)                 # the harness's null class (row num_classes): the learned null caption
        out = table[y.clamp(max=len(table) - 1)]
        return torch.where(null.view(-1, 1, 1), torch.full_like(out, float("nan")), out)

    def velocity(self, x, t, y=None):
        return self.field.velocity(x, t, self.caption(y))

    def predict(self, x, t, y=None):
        return self.field.predict(x, t, self.caption(y))
