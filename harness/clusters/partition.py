"""Data partitioning for decentralized experts: features -> k-means -> cluster ids, cached by hash.

Seed 003 (Sec. 2.1, Sec. 6.1) clusters DINOv2-ViT-L/14 [CLS] features with (hierarchical)
k-means under cosine distance, and trains one expert per cluster.  DINOv2 weights cannot
be downloaded here, so the feature source is a registered ``extractor`` (a user-supplied
DINOv2 TorchScript file via ``dinov2``, Inception-V3, the fixed-seed small CNN) or
``pixels`` (the raw data, flattened): each named for what it is, and its weights' SHA-256
goes into the cache key, so changing the extractor changes the clustering hash and with
it every expert unit's hash.

The clustering is Lloyd k-means with k-means++ seeding from a seeded generator
(deterministic on CPU), in torch; ``metric='cosine'`` L2-normalises the features first
(spherical k-means, the seed's cosine distance).  ``fine_k`` selects seed 003 Sec. 6.1's
two-stage hierarchical variant: k-means into ``fine_k`` fine groups (1024 in the seed), then
k-means of the fine centroids, each weighted by its group's size, into the K coarse clusters
(so a coarse centroid is the mean of its member items), and finally every item assigned to
its nearest coarse centroid ("each image ... is then assigned to its nearest cluster").
``fine_k: null`` is flat k-means straight into K.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.core import dist
from harness.core.errors import ConfigError, DataError
from harness.core.hashing import content_hash

PIXELS = "pixels"
PRECOMPUTED = "precomputed"
METRICS = ("euclidean", "cosine")
PARTITION_VERSION = 1  # bump when the clustering arithmetic changes


@dataclasses.dataclass
class Clustering:
    """K cluster ids of every training item, the centroids, and how they were obtained."""

    hash: str                     # content hash of (data, features + weights SHA-256, k, metric, iters, seed)
    ids: np.ndarray               # (N,) int64 in [0, k)
    centroids: np.ndarray         # (k, F) float32, in the (normalised, for cosine) feature space
    provenance: dict[str, Any]    # extractor, weights SHA-256, k, metric, counts, ...

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def counts(self) -> list[int]:
        return np.bincount(self.ids, minlength=self.k).tolist()


class PrecomputedFeatures:
    """Features computed elsewhere (e.g. DINOv2 on the images behind latent data), one row per item, from ``.npy``.

    The full-scale setups train on VAE latents, whose images are not here to extract from;
    seed 003 computes DINOv2 features once offline (Sec. 6.1), which this loads.
    """

    name = PRECOMPUTED

    def __init__(self, path: Optional[str] = None) -> None:
        if not path or not Path(path).expanduser().exists():
            raise ConfigError(f"method.features_kwargs.path: precomputed features file {path!r} not found",
                              hint="pass method.features_kwargs.path=/path/to/features.npy (N x F, rows aligned with the data)")
        from harness.evaluate.feature_extractors import file_sha256

        self.path = Path(path).expanduser()
        self.weights_sha256, self.weights_source = file_sha256(self.path), f"precomputed:{self.path}"

    def rows(self, n: int) -> torch.Tensor:
        x = torch.from_numpy(np.load(self.path)).float()
        x = x.reshape(x.shape[0], -1)
        if x.shape[0] != n:
            raise DataError(f"{self.path} holds {x.shape[0]} feature rows but the data has {n} items",
                            hint="rows must be aligned one-to-one with the data")
        return x


def build_feature_extractor(name: str, kwargs: Optional[Mapping[str, Any]] = None):
    """The registered extractor ``name`` (``pixels`` is the identity and needs none)."""
    if name == PIXELS:
        return None
    if name == PRECOMPUTED:
        return PrecomputedFeatures(**dict(kwargs or {}))
    from harness.core.registry import get

    return get("extractor", name)(**dict(kwargs or {}))


def extractor_identity(name: str, extractor) -> dict[str, str]:
    """Name, weights source and SHA-256 of a feature source: the part of the cache key that names it."""
    if extractor is None:
        return {"name": PIXELS, "weights_sha256": "none", "weights_source": "identity (raw data, flattened)"}
    return {"name": name, "weights_sha256": str(extractor.weights_sha256), "weights_source": str(extractor.weights_source)}


def features_of(dataset, extractor, batch: int = 4096) -> torch.Tensor:
    """(N, F) float32 features of every item: raw rows for ``pixels``, else the extractor's on uint8 images."""
    if extractor is None:
        return dataset.x.reshape(len(dataset), -1).float()
    if isinstance(extractor, PrecomputedFeatures):
        return extractor.rows(len(dataset))
    if dataset.kind != "image":
        raise ConfigError(f"method.features: extractor {extractor.name!r} needs images but the data holds {dataset.kind} rows",
                          hint="use method.features=pixels for vector or latent data")
    from harness.data.transforms import float_to_uint8

    out = [torch.from_numpy(np.asarray(extractor.features(float_to_uint8(dataset.x[i:i + batch])))).float()
           for i in range(0, len(dataset), batch)]
    return torch.cat(out)


def _normalise(x: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, K) without forming (N, K, F)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None]).clamp_min(0)


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100, metric: str = "euclidean",
           key: str = "method.k", weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: (ids (N,), centroids (k, F)).

    ``weights`` (N,) > 0 weight the points in the seeding and the centroid means (the
    coarse stage of :func:`hierarchical_kmeans`: a fine centroid counts as its group's
    items).  Raises a one-line ConfigError for more clusters than items, or a cluster that
    ends empty (duplicate items, or k too large for the data's distinct points).
    """
    if metric not in METRICS:
        raise ConfigError(f"method.metric: {metric!r} is not one of {', '.join(METRICS)}")
    n = x.shape[0]
    if k < 1 or k > n:
        raise ConfigError(f"{key}={k}: k-means needs 1 <= k <= {n}, the number of items in the data",
                          hint=f"lower {key} or use more data")
    x = _normalise(x.double(), metric)
    w = torch.ones(n, dtype=x.dtype) if weights is None else weights.to(x.dtype).reshape(n)
    g = torch.Generator().manual_seed(int(seed))
    first = torch.randint(n, (1,), generator=g) if weights is None else torch.multinomial(w / w.sum(), 1, generator=g)
    centroids = x[first]
    for _ in range(1, k):                                             # k-means++ (Arthur & Vassilvitskii 2007)
        d = _sq_dists(x, centroids).min(1).values * w
        if float(d.sum()) <= 0:
            raise ConfigError(f"{key}={k}: the data has fewer than {k} distinct feature vectors, so a cluster would be empty",
                              hint=f"lower {key}")
        centroids = torch.cat([centroids, x[torch.multinomial(d / d.sum(), 1, generator=g)]])
    ids = torch.full((n,), -1, dtype=torch.long)
    for _ in range(max(1, int(iters))):
        new_ids = _sq_dists(x, centroids).argmin(1)
        counts = torch.bincount(new_ids, minlength=k)
        if bool((counts == 0).any()):
            empty = int((counts == 0).nonzero()[0])
            raise ConfigError(f"{key}={k}: cluster {empty} is empty after k-means", hint=f"lower {key} or change method.kmeans_seed")
        mass = torch.zeros(k, dtype=x.dtype).index_add_(0, new_ids, w)
        centroids = _normalise(torch.zeros_like(centroids).index_add_(0, new_ids, x * w[:, None]) / mass[:, None], metric)
        if torch.equal(new_ids, ids):
            break
        ids = new_ids
    return ids, centroids.float()


def hierarchical_kmeans(x: torch.Tensor, k: int, fine_k: int, *, seed: int = 0, iters: int = 100,
                        metric: str = "euclidean") -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 003 Sec. 6.1's two stages: ``fine_k`` fine groups, their centroids (weighted by size) into ``k``.

    Returns (ids (N,), coarse centroids (k, F)) with every item assigned to its nearest coarse
    centroid; an item's final cluster can differ from its fine group's (a fine group near a
    coarse boundary), as in the seed's final nearest-cluster assignment.
    """
    if fine_k <= k:
        raise ConfigError(f"method.fine_k={fine_k} must exceed method.k={k} (fine groups are merged into k coarse clusters)",
                          hint="raise method.fine_k (seed 003: 1024 for k=8) or set method.fine_k=null for flat k-means")
    fine_ids, fine_c = kmeans(x, fine_k, seed=seed, iters=iters, metric=metric, key="method.fine_k")
    sizes = torch.bincount(fine_ids, minlength=fine_k)
    _, coarse = kmeans(fine_c.double(), k, seed=seed, iters=iters, metric=metric, weights=sizes)
    ids = assign(x, coarse, metric)
    counts = torch.bincount(ids, minlength=k)
    if bool((counts == 0).any()):
        raise ConfigError(f"method.k={k}: coarse cluster {int((counts == 0).nonzero()[0])} holds no item after the final assignment",
                          hint="lower method.k or change method.kmeans_seed")
    return ids, coarse.float()


def assign(features: torch.Tensor, centroids: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Nearest-centroid ids (N,) of new items (held-out data for the router's accuracy curve)."""
    return _sq_dists(_normalise(features.double(), metric), centroids.double()).argmin(1)


def clustering_key(data_node: Mapping[str, Any], feature_id: Mapping[str, str], feature_kwargs: Mapping[str, Any],
                   *, k: int, metric: str, iters: int, seed: int, fine_k: Optional[int] = None) -> str:
    """The clustering's content hash: what the expert units' data nodes carry (``fine_k`` only when set,
    so flat clusterings keep their hashes)."""
    node = {"version": PARTITION_VERSION, "data": dict(data_node), "features": dict(feature_id),
            "features_kwargs": dict(feature_kwargs), "k": int(k), "metric": metric,
            "iters": int(iters), "seed": int(seed)}
    if fine_k is not None:
        node["fine_k"] = int(fine_k)
    return content_hash(node)


def store_dir(store: str | Path, key: str) -> Path:
    return Path(store).expanduser() / key


def save_clustering(store: str | Path, c: Clustering) -> Path:
    """Write ids + centroids (npz) and the provenance (json) atomically under ``store/<hash>/``."""
    d = store_dir(store, c.hash)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "assignments.tmp.npz"
    np.savez(tmp, ids=c.ids.astype(np.int64), centroids=c.centroids.astype(np.float32))
    tmp.replace(d / "assignments.npz")
    (d / "clustering.json").write_text(json.dumps(dict(c.provenance, hash=c.hash, counts=c.counts), indent=1))
    return d


def load_clustering(store: str | Path, key: str) -> Optional[Clustering]:
    """The cached clustering ``key`` or None; a damaged cache entry is a DataError naming the file."""
    d = store_dir(store, key)
    if not (d / "assignments.npz").exists() or not (d / "clustering.json").exists():
        return None
    try:
        with np.load(d / "assignments.npz") as z:
            ids, centroids = z["ids"].astype(np.int64), z["centroids"]
        prov = json.loads((d / "clustering.json").read_text())
    except Exception as err:  # noqa: BLE001 - any unreadable cache file is the same user-facing problem
        raise DataError(f"clustering cache {d} is unreadable ({type(err).__name__})", hint=f"delete {d} and re-run") from None
    return Clustering(key, ids, centroids, {k: v for k, v in prov.items() if k not in ("hash", "counts")})


def cluster_dataset(dataset, data_node: Mapping[str, Any], *, k: int, features: str = PIXELS,
                    features_kwargs: Optional[Mapping[str, Any]] = None, metric: str = "euclidean",
                    iters: int = 100, seed: int = 0, store: str | Path, fine_k: Optional[int] = None) -> Clustering:
    """Cluster ``dataset`` (built from ``data_node``) into ``k`` groups (hierarchically through ``fine_k``
    fine groups when set), reusing a cached result by hash."""
    if k > len(dataset):
        raise ConfigError(f"method.k={k} exceeds the {len(dataset)} items of the data", hint="lower method.k")
    extractor = build_feature_extractor(features, features_kwargs)
    fid = extractor_identity(features, extractor)
    key = clustering_key(data_node, fid, features_kwargs or {}, k=k, metric=metric, iters=iters, seed=seed, fine_k=fine_k)
    with dist.main_first() as main:   # rank 0 clusters and writes; the other ranks read its result
        cached = load_clustering(store, key)
        if cached is not None or not main:
            return cached
        x = features_of(dataset, extractor)
        if fine_k is None:
            ids, centroids = kmeans(x, k, seed=seed, iters=iters, metric=metric)
        else:
            if fine_k > len(dataset):
                raise ConfigError(f"method.fine_k={fine_k} exceeds the {len(dataset)} items of the data",
                                  hint="lower method.fine_k or set it to null for flat k-means")
            ids, centroids = hierarchical_kmeans(x, k, int(fine_k), seed=seed, iters=iters, metric=metric)
        prov = {"version": PARTITION_VERSION, "data": dict(data_node), "features": fid,
                "features_kwargs": dict(features_kwargs or {}), "k": int(k), "metric": metric, "iters": int(iters),
                "seed": int(seed), "n": len(dataset), "fine_k": None if fine_k is None else int(fine_k)}
        c = Clustering(key, ids.numpy(), centroids.numpy(), prov)
        save_clustering(store, c)
        return c
