"""Datasets derived from another data node: one cluster of a clustering, or the data without labels.

Why: a DDM expert is a training unit on one cluster S_k (seed 003, Sec. 2.1), and a unit's
identity is the hash of its data node (harness/units.py).  So the expert's data node is
``{name: cluster_subset, base: <data node>, clustering: <hash>, cluster: k, ...}``: when the
features, k or the data change, the clustering hash changes and so does every expert's
unit hash.  The router's unit uses the same node with ``cluster: null, labels: cluster``:
all the data, labelled by cluster id (seed 003, Sec. 6.3).

``unlabelled`` drops the labels of any data node, so a monolithic baseline can be trained
unconditionally like the DDM experts (the comparison of seed 003, Tab. 1, is unconditional
here since the mini twins have no captions).  Its ``split`` and ``limit`` are forwarded to
the base node, which lets the evaluator's reference set (test split) work unchanged.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from harness.data.base import ArrayDataset, build_dataset
from harness.core.errors import ConfigError, DataError
from harness.core.registry import register
from harness.core.hashing import content_hash

LABELS = ("none", "cluster", "base")
_BASE_CACHE: dict[str, ArrayDataset] = {}


def _base(node: dict[str, Any]) -> ArrayDataset:
    """Build a base data node once per process (K experts + a router share it)."""
    key = content_hash(node)
    if key not in _BASE_CACHE:
        _BASE_CACHE.clear()  # keep at most one base in memory
        _BASE_CACHE[key] = build_dataset(node)
    return _BASE_CACHE[key]


def _relabel(ds: ArrayDataset, labels: torch.Tensor, num_classes: int, tag: dict[str, Any]) -> ArrayDataset:
    new = ds._replace_rows(torch.arange(len(ds)))
    new.y, new.num_classes = labels.to(torch.long), int(num_classes)
    new.info.update(tag)
    return new


def _rows_only(ds: ArrayDataset) -> ArrayDataset:
    """The rows of ``ds`` without caption embeddings (a CaptionedDataset's ``get_batch`` would return them)."""
    if not hasattr(ds, "caption_meta"):
        return ds
    plain = ArrayDataset(ds._x, ds.y, num_classes=ds.num_classes, name=ds.name, kind=ds.kind,
                         info={k: v for k, v in ds.info.items() if k != "captions"})
    for key, value in vars(ds).items():                  # decoder, image_shape, ... (not the caption table)
        if key not in vars(plain) and key not in ("table", "offsets", "index", "caption_meta"):
            setattr(plain, key, value)
    return plain


@register("dataset", "cluster_subset")
def cluster_subset(*, base: dict, clustering: str, store: str, cluster: Optional[int] = None,
                   labels: str = "none", k: Optional[int] = None) -> ArrayDataset:
    """Items of cluster ``cluster`` of clustering ``clustering`` (all items if null).

    ``labels``: ``none`` (an expert without class labels; caption embeddings of captioned data stay, so a
    text-conditioned expert keeps its captions), ``cluster`` (cluster ids as classes: the router's targets,
    captions dropped), ``base`` (keep the base data's labels).  ``k``: the number of clusters as the
    method configured it (the router's node carries it, so its class count is known before clustering:
    ``harness describe``); checked against the clustering.
    """
    from harness.clusters.partition import load_clustering

    if labels not in LABELS:
        raise ConfigError(f"data.labels: {labels!r} is not one of {', '.join(LABELS)}")
    c = load_clustering(store, clustering)
    if c is None:
        raise DataError(f"clustering {clustering} not found under {store}",
                        hint="run the method's prepare step first (harness run/train with the same config)")
    ds = _base(dict(base))
    if len(c.ids) != len(ds):
        raise DataError(f"clustering {clustering} labels {len(c.ids)} items but the data has {len(ds)}",
                        hint="the base data changed; delete the clustering cache and re-run")
    if k is not None and int(k) != c.k:
        raise DataError(f"clustering {clustering} has {c.k} clusters but the data node says k={k}",
                        hint="the method's k changed: its clustering hash should have too; delete the cache and re-run")
    ids = torch.from_numpy(c.ids)
    if cluster is not None:
        if not 0 <= int(cluster) < c.k:
            raise ConfigError(f"data.cluster={cluster} is outside [0, {c.k}) for clustering {clustering}")
        idx = (ids == int(cluster)).nonzero(as_tuple=True)[0]
        if not idx.numel():
            raise DataError(f"cluster {cluster} of clustering {clustering} is empty", hint="lower method.k")
        ds, ids = ds._replace_rows(idx), ids[idx]
    tag = {"cluster": {"clustering": clustering, "cluster": cluster, "k": c.k, "n": len(ds), "labels": labels}}
    if labels == "none":
        return _relabel(ds, torch.zeros(len(ds)), 0, tag)
    if labels == "cluster":   # the router's targets; it reads (x_t, t) only, so caption embeddings are dropped
        return _relabel(_rows_only(ds), ids, c.k, tag)
    new = ds._replace_rows(torch.arange(len(ds)))
    new.info.update(tag)
    return new


@register("dataset", "unlabelled")
def unlabelled(*, base: dict, split: Optional[str] = None, limit: Optional[int] = None) -> ArrayDataset:
    """The base data node without labels (num_classes = 0); ``split``/``limit`` override the base's."""
    node = dict(base)
    if split is not None:
        node["split"] = split
    if limit is not None:
        node["limit"] = int(limit)
    ds = build_dataset(node)
    return _relabel(ds, torch.zeros(len(ds)), 0, {"labels": "dropped (unconditional)"})
