"""The guidance plug-in protocol: a plug-in turns a method's Field into a ``Guided`` one (seed 004).

``@register("guidance", NAME)`` on a :class:`Guidance` subclass in ``baselines/`` or ``methods/``
(CFG, AutoGuidance, ICG, Sparse Guidance and the combinations), plus
``harness/conf/guidance/NAME.yaml``.  The guided field itself is :class:`harness.field.guided.Guided`;
the checks every guidance shares (labels for CFG/ICG, gamma ranges, a sparse-trained backbone for SG)
live here so each plug-in states its requirements in one line.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.backbones.token_selection import build_token_selector
from harness.core.errors import ConfigError
from harness.core.registry import get, register
from harness.data.shapes import data_shape
from harness.field.base import Field
from harness.field.guided import Branch, Guided
from harness.train.units import UnitSpec


class Guidance:
    """Base of guidance plug-ins (``@register("guidance", NAME)``): options = ``cfg['guidance']``.

    A plug-in may contribute units (AutoGuidance's weak model), trained with the method's;
    :meth:`wrap` turns the method's Field into a :class:`Guided` one.
    """

    active = True  # False only for the unguided field (records and ``harness describe`` skip guidance costs)

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        """Cross-key invariants (raise ConfigError naming the key)."""

    def units(self) -> dict[str, UnitSpec]:
        """Extra units by role (trained and loaded beside the method's)."""
        return {}

    def wrap(self, field: Field, parts: Mapping[str, tuple[torch.nn.Module, Any]], num_classes: int) -> Field:
        """The sampling field: ``field`` itself, or a Guided field around it."""
        return field

    def describe(self) -> dict[str, Any]:
        return {"guidance": getattr(self, "registered_name", "none")}


@register("guidance", "none")
class NoGuidance(Guidance):
    """The method's own (conditional) field, unguided."""

    active = False


class ScaledGuidance(Guidance):
    """Shared options of every real guidance: scale omega and the guidance interval."""

    def __init__(self, cfg: Mapping[str, Any], scale: float = 1.5, interval: list[float] = (0.0, 1.0),
                 seed: int = 0) -> None:
        super().__init__(cfg)
        self.scale, self.interval, self.seed = float(scale), [float(v) for v in interval], int(seed)

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        g = cfg["guidance"]
        scale = g.get("scale", 1.5)
        if not float(scale) >= 1.0:
            raise ConfigError(f"guidance.scale must be >= 1 (seed 004 Eq. 3: omega >= 1; 1 = no guidance), got {scale}")
        iv = list(g.get("interval", (0.0, 1.0)))
        if len(iv) != 2 or not 0.0 <= float(iv[0]) < float(iv[1]) <= 1.0:
            raise ConfigError(f"guidance.interval must be [lo, hi] with 0 <= lo < hi <= 1 (t = 0 noise, 1 data), got {iv}")

    def guided(self, strong: Branch, weak: Branch, num_classes: int, channels: Optional[int] = None) -> Guided:
        return Guided(strong, weak, self.scale, interval=self.interval, num_classes=num_classes, seed=self.seed,
                      channels=channels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale, "interval": self.interval}


def data_classes(cfg: Mapping[str, Any]) -> int:
    """Number of classes of the configured data (nominal when the data is absent here)."""
    return int(data_shape(cfg["data"])[1])


def yields_captions(cfg: Mapping[str, Any]) -> bool:
    """The data are caption embeddings (a text backbone's condition; the null is its learned null caption)."""
    from harness.core.registry import get

    return bool(getattr(get("dataset", cfg["data"]["name"]), "yields_captions", False))


def require_labels(cfg: Mapping[str, Any], why: str) -> None:
    """CFG/ICG need labelled data (class labels, or captions for CFG) and (CFG) a trained null class."""
    name = cfg["guidance"]["name"]
    if why == "the null-class branch" and yields_captions(cfg):
        return                                # CFG on captions: the null branch is the learned null caption
    if data_classes(cfg) < 1:
        raise ConfigError(f"guidance={name}: {why} needs class labels, but data={cfg['data']['name']} is unconditional",
                          hint="use guidance=none, autoguidance or sparse on unconditional data")


def require_null_class(cfg: Mapping[str, Any]) -> None:
    name = cfg["guidance"]["name"]
    require_labels(cfg, "the null-class branch")
    if float(cfg["train"].get("label_dropout", 0.0)) <= 0.0:
        raise ConfigError(f"train.label_dropout: guidance={name} needs a trained null class, got 0",
                          hint="set train.label_dropout=0.1 (CFG training)")


def check_gammas(cfg: Mapping[str, Any], ordered: bool = True) -> tuple[float, float]:
    """Both sparsities in [0, 1); ``ordered``: 0 <= gamma_strong < gamma_weak < 1 (seed 004, below Eq. 6, for SG,
    whose two branches are one model: a weak branch no sparser than the strong one would not be weaker)."""
    g = cfg["guidance"]
    gs, gw = float(g.get("gamma_strong", 0.0)), float(g.get("gamma_weak", 0.5))
    for key, v in (("gamma_strong", gs), ("gamma_weak", gw)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"guidance.{key} must be in [0, 1) (fraction of tokens skipped), got {v}")
    if ordered and not gs < gw:
        raise ConfigError(f"guidance.gamma_weak must exceed guidance.gamma_strong (seed 004: 0 <= gamma_strong < "
                          f"gamma_weak < 1), got gamma_strong={gs}, gamma_weak={gw}")
    return gs, gw


def require_sparse_training(cfg: Mapping[str, Any]) -> None:
    """SG uses the train-time sparsity as its guidance signal (seed 004 Sec. 3.2): refuse a dense backbone."""
    b = cfg["backbone"]
    name = cfg["guidance"]["name"]
    selector = b.get("token_selector")
    built = build_token_selector(selector, b.get("token_selector_kwargs"), dim=b.get("hidden_size", 8)) if selector else None
    if built is None or not built.trains_sparse:
        raise ConfigError(f"backbone.token_selector: guidance={name} needs a backbone trained with token sparsity "
                          f"(seed 004 Sec. 3.2), got token_selector={selector!r} "
                          f"with kwargs {b.get('token_selector_kwargs') or {}}",
                          hint="set backbone.token_selector=random_route (or random_mask) with token_selector_kwargs.gamma > 0")


def build_guidance(cfg: Mapping[str, Any]) -> Guidance:
    """The configured guidance plug-in (``none`` when the config has no guidance node)."""
    node = dict(cfg.get("guidance") or {"name": "none"})
    cls = get("guidance", node.pop("name"))
    return cls(cfg, **node)
