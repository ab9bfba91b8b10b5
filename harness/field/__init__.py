"""The one velocity-field abstraction (DESIGN.md): every method builds a Field, every sampler integrates one.

| field | module | used by |
|---|---|---|
| ``Net`` (one network), ``Exact`` (closed form), ``Piecewise`` (expert per time interval) | ``base`` | monolithic, MoE, splits, CBS |
| ``Mixture`` (router-weighted data experts) | ``mixture`` | DDM, heterogeneous DDM |
| ``Guided`` (``weak + omega (strong - weak)``) | ``guided`` | CFG, AG, ICG, Sparse Guidance |
"""
from harness.field.base import Exact, Field, Net, Piecewise
from harness.field.guided import Branch, Guided
from harness.field.mixture import Mixture

__all__ = ["Branch", "Exact", "Field", "Guided", "Mixture", "Net", "Piecewise"]
