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
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Optional, Sequence

import torch

from harness.backbones.token_selection import sparsity
from harness.errors import ConfigError
from harness.field import Field
from harness.registry import register
from harness.units import UnitSpec

LABELS = ("cond", "null", "random")  # the label a branch sees: given, null class (CFG), random class (ICG)


@dataclasses.dataclass
class Branch:
    """One prediction of a guided field: which field, which label, which token sparsity."""

    field: Field
    label: str = "cond"                 # cond | null | random (see LABELS)
    gamma: Optional[float] = None       # per-call token sparsity; None = the backbone's eval default
    stream: int = 0                     # mask/label random stream; equal streams draw equal masks

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"branch label must be one of {LABELS}, got {self.label!r}")
        if self.gamma is not None and not 0.0 <= float(self.gamma) < 1.0:
            raise ValueError(f"branch gamma must be in [0, 1), got {self.gamma}")


def stream_generator(seed: int, call: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, call index, stream): masks redrawn per step and branch."""
    digest = hashlib.sha256(f"guidance:{seed}:{call}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Guided(Field):
    """``weak + scale (strong - weak)`` inside ``interval``, ``strong`` outside (seed 004 Eq. 3, 7, 8).

    ``num_classes`` is needed only by a ``random``-label branch (ICG).  Each call draws the
    branches' token masks (and ICG's classes) from generators seeded by (seed, call, stream),
    so a sampling run is reproducible and masks differ between steps and between branches
    with different streams.  Masks are drawn per batch, so they depend on how samples are
    batched (the image noise and labels do not).
    """

    def __init__(self, strong: Branch, weak: Branch, scale: float, *, interval: Sequence[float] = (0.0, 1.0),
                 num_classes: int = 0, seed: int = 0) -> None:
        self.strong, self.weak, self.scale = strong, weak, float(scale)
        self.interval = (float(interval[0]), float(interval[1]))
        self.num_classes, self.seed = int(num_classes), int(seed)
        self.calls = 0
        if self.num_classes < 1 and {strong.label, weak.label} & {"null", "random"}:
            raise ConfigError("guidance: a null-class (CFG) or random-class (ICG) branch needs labelled data, "
                              "but the trained units have num_classes = 0", hint="use guidance=none, autoguidance or sparse")

    def guided_at(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: where guidance applies (t in the closed interval)."""
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)

    def branch(self, b: Branch, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor], call: int) -> torch.Tensor:
        """One branch's velocity (B, ...) with its label and sparsity for this call."""
        gen = None if x.device.type == "meta" else stream_generator(self.seed, call, b.stream)
        if b.label == "null":
            y = None
        elif b.label == "random":
            if x.device.type == "meta":
                y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            else:
                y = torch.randint(self.num_classes, (x.shape[0],), generator=gen).to(x.device)
        with sparsity(b.gamma, gen):
            return b.field(x, t, y)

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
        labels = [null if b.label == "null" or y is None else y for b in (self.strong, self.weak)]
        with sparsity(self.strong.gamma, None):
            strong, weak = self.strong.field(torch.cat([x, x]), torch.cat([t, t]), torch.cat(labels)).chunk(2)
        return weak + self.scale * (strong - weak)

    def velocity(self, x, t, y=None):
        call, self.calls = self.calls, self.calls + 1
        if self.pools_halves(x, t):
            return self.pooled_velocity(x, t, y)
        strong = self.branch(self.strong, x, t, y, call)
        on = self.guided_at(t)
        if x.device.type != "meta" and not bool(on.any()):
            return strong
        weak = self.branch(self.weak, x, t, y, call)
        guided = weak + self.scale * (strong - weak)
        if x.device.type == "meta" or bool(on.all()):
            return guided
        return torch.where(on.reshape(-1, *([1] * (x.dim() - 1))), guided, strong)


# ------------------------------------------------------------------ plug-in protocol
class Guidance:
    """Base of guidance plug-ins (``@register("guidance", NAME)``): options = ``cfg['guidance']``.

    A plug-in may contribute units (AutoGuidance's weak model), trained with the method's;
    :meth:`wrap` turns the method's Field into a :class:`Guided` one.
    """

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

    def guided(self, strong: Branch, weak: Branch, num_classes: int) -> Guided:
        return Guided(strong, weak, self.scale, interval=self.interval, num_classes=num_classes, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale, "interval": self.interval}


def data_classes(cfg: Mapping[str, Any]) -> int:
    """Number of classes of the configured data (nominal when the data is absent here)."""
    from harness.describe import data_shape

    return int(data_shape(cfg["data"])[1])


def require_labels(cfg: Mapping[str, Any], why: str) -> None:
    """CFG/ICG need labelled data and (CFG) a trained null class."""
    name = cfg["guidance"]["name"]
    if data_classes(cfg) < 1:
        raise ConfigError(f"guidance={name}: {why} needs class labels, but data={cfg['data']['name']} is unconditional",
                          hint="use guidance=none, autoguidance or sparse on unconditional data")


def require_null_class(cfg: Mapping[str, Any]) -> None:
    name = cfg["guidance"]["name"]
    require_labels(cfg, "the null-class branch")
    if float(cfg["train"].get("label_dropout", 0.0)) <= 0.0:
        raise ConfigError(f"train.label_dropout: guidance={name} needs a trained null class, got 0",
                          hint="set train.label_dropout=0.1 (CFG training)")


def check_gammas(cfg: Mapping[str, Any]) -> tuple[float, float]:
    """0 <= gamma_strong < gamma_weak < 1 (seed 004, below Eq. 6)."""
    g = cfg["guidance"]
    gs, gw = float(g.get("gamma_strong", 0.0)), float(g.get("gamma_weak", 0.5))
    for key, v in (("gamma_strong", gs), ("gamma_weak", gw)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"guidance.{key} must be in [0, 1) (fraction of tokens skipped), got {v}")
    if not gs < gw:
        raise ConfigError(f"guidance.gamma_weak must exceed guidance.gamma_strong (seed 004: 0 <= gamma_strong < "
                          f"gamma_weak < 1), got gamma_strong={gs}, gamma_weak={gw}")
    return gs, gw


def require_sparse_training(cfg: Mapping[str, Any]) -> None:
    """SG uses the train-time sparsity as its guidance signal (seed 004 Sec. 3.2): refuse a dense backbone."""
    from harness.backbones.token_selection import build_token_selector

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
    from harness.registry import get

    node = dict(cfg.get("guidance") or {"name": "none"})
    cls = get("guidance", node.pop("name"))
    return cls(cfg, **node)


def check_guidance_config(cfg: Mapping[str, Any]) -> None:
    """Run the configured guidance plug-in's ``check_config`` (called by config validation)."""
    from harness.registry import get

    node = cfg.get("guidance")
    if node:
        get("guidance", node["name"]).check_config(cfg)
