"""One typed registry for every plug-in kind (STYLE practice 1, after lm-eval's registry).

Plug-ins register themselves with ``@register(kind, name)`` in their own file and
nowhere else; lookups of unknown names raise :class:`RegistryError` with a
"did you mean" and the list of known names.  Discovery imports every module of
the plug-in packages (:func:`discover`), letting import errors raise.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, TypeVar

from harness.core.errors import RegistryError

T = TypeVar("T")

KINDS = (
    "ffn",         # pluggable feed-forward blocks of transformer backbones (dense, MoE)
    "token_selector",  # token routing / masking around a block range
    "method",      # builds units and assembles a Field (methods/ and baselines/)
    "backbone",    # nn.Module(x, t, y) -> same shape as x
    "dataset",     # harness.data.base.ArrayDataset factories
    "objective",   # training losses and their conversion to velocity
    "time_sampler",
    "time_map",    # harness t -> a backbone's time input (seed 003 Eq. 21: a DDPM DiT's step index for FM experts)
    "monitor",     # CBS complexity monitors (later issues)
    "sampler",     # ODE integrators over a Field
    "metric",
    "extractor",   # feature extractors for Frechet distances
    "guidance",    # wraps a method's Field into a Guided one (CFG, AG, ICG, Sparse Guidance; harness/api/guidance.py)
    "sweep_deriver",  # sweep cells computed from a derived quantity (harness/sweep/derive.py)
    "sweep_constraint",  # fn(cfg) -> float; Optuna trials above optuna.constraint.max are pruned (harness/sweep/search.py)
    "launcher",    # where sweep tasks run: debug | local | slurm (harness/launch/)
    "config_node",  # schema dataclass of a root config node a plug-in owns (e.g. split: harness/split/config.py)
)


def suggest(name: str, known: Iterable[str]) -> str:
    """Return ``" Did you mean: x?"`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" Did you mean: {close[0]}?" if close else ""


class Registry(Generic[T]):
    """Name -> object for one plug-in kind; aliases are unique, lookups suggest."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._origin: Dict[str, str] = {}
        self._frozen = False

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a second object under the same name is an error."""
        if self._frozen:
            raise RegistryError(f"{self.kind} registry is frozen; cannot add {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} registered twice: at {self._origin[name]} and at {_where(obj)}"
            )
        self._items[name] = obj
        self._origin[name] = _where(obj)
        return obj

    def get(self, name: str) -> T:
        """Look ``name`` up, failing with the known names and the closest one."""
        discover()
        if name not in self._items:
            known = sorted(self._items)
            raise RegistryError(
                f"Unknown {self.kind} {name!r}.{suggest(name, known)} Available: {', '.join(known) or '(none)'}"
            )
        return self._items[name]

    def keys(self) -> List[str]:
        discover()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        """``file:line`` where ``name`` was registered."""
        self.get(name)
        return self._origin[name]

    def freeze(self) -> None:
        self._frozen = True

    def __contains__(self, name: object) -> bool:
        discover()
        return name in self._items


def _where(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return repr(obj)


REGISTRIES: Dict[str, Registry[Any]] = {kind: Registry(kind) for kind in KINDS}


def registry(kind: str) -> Registry[Any]:
    """The registry of one plug-in kind."""
    if kind not in REGISTRIES:
        raise RegistryError(f"Unknown plug-in kind {kind!r}.{suggest(kind, KINDS)} Available: {', '.join(KINDS)}")
    return REGISTRIES[kind]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class/function decorator: ``@register("method", "cbs")``."""

    def deco(obj: T) -> T:
        registry(kind).add(name, obj)
        try:
            setattr(obj, "registered_name", name)
        except (AttributeError, TypeError):
            pass
        return obj

    return deco


def get(kind: str, name: str) -> Any:
    """Shorthand for ``registry(kind).get(name)``."""
    return registry(kind).get(name)


# Packages whose every module registers plug-ins when imported.
PLUGIN_PACKAGES = (
    "harness.data",
    "harness.backbones",
    "harness.objectives",
    "harness.sample",
    "harness.evaluate",
    "harness.split",
    "harness.clusters",
    "harness.launch",
    "harness.methods",
    "harness.baselines",
)
_discovered = False


def discover() -> None:
    """Import every plug-in module once (import errors raise: a broken plug-in is a bug)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            importlib.import_module(info.name)
