"""The one in-memory dataset type of the harness and the config entry point that builds it.

Every loader returns an :class:`ArrayDataset`: float32 rows ``x`` (images in [-1, 1],
``(N, C, H, W)``; vectors ``(N, D)``; latents ``(N, 4, 32, 32)``) and int64 labels ``y``.
Training only ever calls :meth:`ArrayDataset.get_batch` with random indices, so a dataset
is nothing more than two aligned arrays plus the provenance (``info``) that an MLflow run
records.  Keeping it this small is what lets one training loop serve pixels, latents and
the analytic Gaussian mixture alike.

Datasets too large for memory (ImageNet latents) keep their rows in a :class:`RowSource`
(memory-mapped shards) and are only materialised if someone asks for ``x`` as a whole.

:func:`build_dataset` turns a ``data`` config node into a dataset: it looks the factory up
in the registry, checks the node's keys against the factory's signature (unknown keys are
a one-line :class:`~harness.core.errors.ConfigError` with a did-you-mean), then applies the
generic keys every dataset understands (``subset_fraction``/``subset_seed``,
``resolution``, ``channels``).
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import typing
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import torch

from harness.core.errors import ConfigError
from harness.core.files import sha256_file
from harness.data.transforms import float_to_uint8, pad_or_resize, replicate_channels

KINDS = ("image", "vector", "latent")
# keys build_dataset handles itself; every dataset accepts them (see harness.config.DATA_GENERIC_KEYS)
GENERIC_KEYS: dict[str, Any] = {
    "resolution": int | None,
    "channels": int | None,
    "subset_fraction": float,
    "subset_seed": int,
    "hflip": bool,       # training batches only (harness.train.batches); the dataset itself is never flipped
}


class RowSource:
    """Rows that live outside memory (e.g. memory-mapped ``.npz`` shards).

    Subclasses implement :meth:`__len__`, :attr:`row_shape`, :meth:`take` and
    :meth:`select`; :class:`ArrayDataset` uses them so that batches are read on demand.
    """

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def row_shape(self) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    def take(self, idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """float32 rows at positions ``idx`` (a 1-D LongTensor), in that order."""
        raise NotImplementedError

    def select(self, idx: torch.Tensor) -> "RowSource":  # pragma: no cover - interface
        """A view holding only the rows at ``idx`` (used by subsets and limits)."""
        raise NotImplementedError

    def materialize(self) -> torch.Tensor:
        return self.take(torch.arange(len(self)))


class ArrayDataset:
    """Aligned float32 rows ``x`` and int64 labels ``y`` with their provenance.

    ``num_classes`` is 0 for unconditional data (labels are then all 0 and ignored);
    ``kind`` is ``'image'``, ``'vector'`` or ``'latent'``; ``info`` must stay
    JSON-serialisable because it is logged as-is (file paths, SHA-256, licence, ...).
    Loaders may attach extra attributes (``dataset.mixture``); :meth:`subset` keeps them.
    """

    def __init__(self, x: torch.Tensor | RowSource, y: torch.Tensor, *, num_classes: int, name: str,
                 kind: str, info: Mapping[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"dataset kind must be one of {KINDS}, got {kind!r}")
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.float32:
                x = x.to(torch.float32)
            n = x.shape[0]
        elif isinstance(x, RowSource):
            n = len(x)
        else:
            raise TypeError(f"x must be a torch.Tensor or RowSource, got {type(x).__name__}")
        y = torch.as_tensor(y).to(torch.long).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{name}: {n} rows but {y.shape[0]} labels")
        if num_classes > 0 and n > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name}: labels outside [0, {num_classes}): min {int(y.min())}, max {int(y.max())}")
        self._x = x
        self.y = y
        self.num_classes = int(num_classes)
        self.name = name
        self.kind = kind
        self.info: dict[str, Any] = dict(info or {})
        json.dumps(self.info)  # fail early: info goes to MLflow verbatim

    # ----------------------------------------------------------------- rows
    @property
    def x(self) -> torch.Tensor:
        """All rows as one tensor (materialises a lazy source once; beware of its size)."""
        if isinstance(self._x, RowSource):
            self._x = self._x.materialize()
        return self._x

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        self._x = value.to(torch.float32)

    @property
    def is_lazy(self) -> bool:
        return isinstance(self._x, RowSource)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 28, 28)`` or ``(2,)``."""
        if isinstance(self._x, RowSource):
            return tuple(self._x.row_shape)
        return tuple(self._x.shape[1:])

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and labels at ``idx`` (LongTensor); reads only those rows from a lazy source."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(self._x, RowSource):
            return self._x.take(idx), self.y[idx]
        return self._x[idx], self.y[idx]

    def _replace_rows(self, idx: torch.Tensor) -> "ArrayDataset":
        """A shallow copy holding only rows ``idx`` (extra attributes such as ``mixture`` survive)."""
        new = copy.copy(self)
        new._x = self._x.select(idx) if isinstance(self._x, RowSource) else self._x[idx]
        new.y = self.y[idx]
        new.info = copy.deepcopy(self.info)
        return new

    def head(self, n: int) -> "ArrayDataset":
        """The first ``n`` items (what every loader's ``limit`` means)."""
        if n < 0:
            raise ConfigError(f"data.limit must be >= 0, got {n}")
        if n >= len(self):
            return self
        new = self._replace_rows(torch.arange(n))
        new.info["limit"] = n
        return new

    def subset(self, fraction: float, seed: int = 0) -> "ArrayDataset":
        """A deterministic random ``fraction`` of the items (original order kept).

        The chosen indices depend only on ``(len(self), fraction, seed)``, so two units
        trained on the same subset see the same images on every machine.
        """
        if not 0.0 < float(fraction) <= 1.0:
            raise ConfigError(f"data.subset_fraction must be in (0, 1], got {fraction}")
        if float(fraction) == 1.0:
            return self
        n_keep = max(1, int(round(float(fraction) * len(self))))
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=g)[:n_keep].sort().values
        new = self._replace_rows(idx)
        new.info["subset"] = {"fraction": float(fraction), "seed": int(seed), "n": n_keep,
                              "of": len(self)}
        return new

    def to_uint8_images(self) -> torch.Tensor:
        """Images as uint8 ``(N, C, H, W)`` in 0..255, the evaluator's input format."""
        if self.kind != "image":
            raise TypeError(f"{self.name} holds {self.kind} data, not images")
        return float_to_uint8(self.x)

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, shape={self.shape}, "
                f"num_classes={self.num_classes})")


# --------------------------------------------------------------------- provenance helpers
def file_record(paths: list[Path] | list[str]) -> dict[str, str]:
    """``{path: sha256}`` for the ``info['files']`` of a dataset."""
    return {str(p): sha256_file(p, memo=True) for p in paths}


def check_split(split: str, allowed: tuple[str, ...] = ("train", "test")) -> str:
    if split not in allowed:
        raise ConfigError(f"data.split must be one of {', '.join(allowed)}, got {split!r}")
    return split


def finish(ds: ArrayDataset, limit: int | None) -> ArrayDataset:
    """Apply a loader's ``limit`` (first n items)."""
    return ds if limit is None else ds.head(int(limit))


# numpy's own reconstructors are all a pickled array needs; nothing else is allowed to run
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes under pickle protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(module, name)


def load_array_pickle(f: BinaryIO, *, encoding: str = "bytes") -> Any:
    """Unpickle a data file (CIFAR-10 batches, mnist.pkl.gz) allowing only numpy arrays and builtins.

    Dataset pickles come from elsewhere; a plain ``pickle.load`` would execute whatever
    they name.  ``encoding`` matters for Python-2 pickles: ``'bytes'`` keeps their str
    keys as bytes (CIFAR-10's ``b'data'``), ``'latin1'`` makes them str.
    """
    return _ArrayUnpickler(f, encoding=encoding).load()


# --------------------------------------------------------------------- config entry point
def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python, so factories and type checks see lists/dicts."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def factory_signature(factory: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """Keyword parameters and type hints of a dataset factory, plus the generic keys."""
    params = {k: p for k, p in inspect.signature(factory).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: skip type checks, keep key checks
        hints = {}
    for key, hint in GENERIC_KEYS.items():
        params.setdefault(key, inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None))
        hints.setdefault(key, hint)
    return params, hints


def build_dataset(cfg: Mapping[str, Any]) -> ArrayDataset:
    """Build the dataset a ``data`` config node describes.

    ``cfg['name']`` is the registry key; the other keys go to the registered factory,
    except the generic ones: ``subset_fraction``/``subset_seed`` (deterministic random
    subset), ``resolution`` (pad by a small border or resize images to this size),
    ``channels`` (replicate 1 -> 3) and ``hflip`` (random horizontal flips of each *training
    batch*, applied by :func:`harness.train.batches.draw_batch`; checked here, never applied here).  Unknown keys raise ``ConfigError`` naming
    ``data.<key>`` with a did-you-mean.
    """
    from harness.config.schema import check_kwargs
    from harness.core.registry import get

    node = {str(k): _plain(v) for k, v in dict(_plain(cfg)).items()}
    if "name" not in node:
        raise ConfigError("data.name is missing", hint="pick a dataset with data=OPTION, e.g. data=fashion_mnist")
    name = node.pop("name")
    factory = get("dataset", name)
    params, hints = factory_signature(factory)
    check_kwargs("data", node, params, hints)
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in node]
    if missing:
        raise ConfigError(f"data.{missing[0]}: a value is required for dataset {name!r}",
                          hint=f"pass data.{missing[0]}=...")
    generic = {k: node.pop(k) for k in list(node) if k in GENERIC_KEYS}
    ds = factory(**node)
    if not isinstance(ds, ArrayDataset):
        raise TypeError(f"dataset factory {name!r} returned {type(ds).__name__}, not ArrayDataset")
    ds.info.setdefault("config", {"name": name, **node})

    if generic.get("hflip") and ds.kind not in ("image", "latent"):
        raise ConfigError(f"data.hflip=true mirrors images left-right; {ds.name} holds {ds.kind} data",
                          hint="set data.hflip=false")
    fraction = generic.get("subset_fraction")
    ds = ds.subset(1.0 if fraction is None else float(fraction), int(generic.get("subset_seed") or 0))

    resolution, channels = generic.get("resolution"), generic.get("channels")
    if resolution is not None or channels is not None:
        ds = apply_image_transforms(ds, resolution=resolution, channels=channels)
    return ds


def default_cache_dir() -> Path:
    """Where the harness writes derived datasets (``HARNESS_CACHE`` or ``~/.cache/harness``)."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env) if env else Path(os.environ.get("HOME", ".")) / ".cache" / "harness"


def apply_image_transforms(ds: ArrayDataset, *, resolution: int | None, channels: int | None) -> ArrayDataset:
    """The generic ``data.resolution`` / ``data.channels`` keys, recorded in ``info['transforms']``."""
    if ds.kind != "image":
        raise ConfigError(f"data.resolution/data.channels apply to images only; {ds.name} holds {ds.kind} data",
                          hint="set data.resolution=null data.channels=null")
    x = ds.x
    ds = copy.copy(ds)
    ds.info = copy.deepcopy(ds.info)
    done: dict[str, object] = {}
    if resolution is not None:
        if int(resolution) < 1:
            raise ConfigError(f"data.resolution must be >= 1, got {resolution}")
        x, how = pad_or_resize(x, int(resolution))
        done["resolution"] = {"size": int(resolution), "method": how}
    if channels is not None:
        if int(channels) < 1:
            raise ConfigError(f"data.channels must be >= 1, got {channels}")
        x = replicate_channels(x, int(channels))
        done["channels"] = int(channels)
    ds.x = x
    ds.info["transforms"] = done
    return ds
