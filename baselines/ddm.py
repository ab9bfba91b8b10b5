"""Decentralized diffusion (DDM, homogeneous): K experts on data clusters + a router, assembled as a Mixture.

The DAG of seed 003 (Sec. 2.1, Sec. 6; after McAllister et al. 2025):

    features (registered extractor or pixels) -> k-means -> cluster ids (cached by hash)
      -> expert[k]: a unit on cluster S_k only (its data node names the clustering hash)
      -> router: a unit on all data, labelled by cluster id, trained with ``router_ce``
      -> Mixture(experts, router, mixing)          (Eq. 1-2; top1 | topk | full)

Every expert uses the run's ``objective`` (homogeneous: seed 003's "8FM"); the
heterogeneous variant (``hetero_ddm``) overrides the objective of some experts.  The mixing
mode is a sampling-time choice: it is not part of any unit, so one set of experts gives the
Top-1 / Top-2 / Full rows of seed 003, Tab. 1 without retraining.

Budget (recorded with the result): ``per_expert`` gives each expert ``train.steps``;
``equal_total`` gives each ``train.steps // k``; ``equal_total_batch`` gives each
``train.steps`` at batch ``train.batch_size // k``, seed 003 Sec. 3.2's aggregate-compute
match as printed (256 -> 32 per expert).  Both spend the monolithic model's training FLOPs.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from harness.api.method import Method, net_field
from harness.baselines.naive_split import BUDGETS as SPLIT_BUDGETS, expert_steps
from harness.clusters.partition import (METRICS, PIXELS, PRECOMPUTED, Clustering, assign, build_feature_extractor,
                                        cluster_dataset, features_of)
from harness.clusters.router_eval import accuracy_curve, plot_accuracy_curve
from harness.core.errors import ConfigError
from harness.core.registry import register, registry
from harness.data.cache import DatasetCache
from harness.field.base import Field
from harness.field.mixture import Mixture, NetRouter, check_mixing
from harness.train.units import UnitSpec

# equal_total_batch: seed 003 Sec. 3.2's equal-FLOPs protocol as printed (each expert train.steps steps at
# batch train.batch_size // k, e.g. 256 / 8 = 32), beside equal_total (train.steps // k steps at full batch).
BUDGETS = SPLIT_BUDGETS + ("equal_total_batch",)


def expert_train(train: Mapping[str, Any], k: int, budget: str) -> dict[str, Any]:
    """An expert's train node under a budget protocol (the monolithic node is ``train`` itself)."""
    if budget == "equal_total_batch":
        return dict(train, batch_size=int(train["batch_size"]) // k)
    return dict(train, steps=expert_steps(int(train["steps"]), k, budget))

DEFAULT_ROUTER = {"name": "router", "width": 32, "depth": 3, "time_dim": 64}
ROUTER_OBJECTIVE = {"name": "router_ce", "time_sampler": "uniform", "time_sampler_kwargs": {}}
ACCURACY_TS = [round(0.1 * i, 1) for i in range(11)]


def data_size_hint(data: Mapping[str, Any]) -> Optional[int]:
    """Items in the data when the config says so (``limit`` or the mixture's ``n``), else None."""
    for key in ("limit", "n"):
        if data.get(key) is not None:
            return int(data[key])
    return None


@register("method", "ddm")
class DDM(Method):
    def __init__(self, cfg, k: int = 4, features: str = PIXELS, features_kwargs: Optional[dict] = None,
                 metric: str = "euclidean", kmeans_iters: int = 100, kmeans_seed: int = 0,
                 fine_k: Optional[int] = None, router_backbone: Optional[dict] = None, router_steps: Optional[int] = None,
                 router_lr: Optional[float] = None, mixing: str = "top1", top_k: int = 2,
                 budget: str = "per_expert", accuracy_n: int = 500) -> None:
        super().__init__(cfg)
        self.k, self.features, self.features_kwargs = int(k), features, dict(features_kwargs or {})
        self.metric, self.kmeans_iters, self.kmeans_seed = metric, int(kmeans_iters), int(kmeans_seed)
        self.fine_k = None if fine_k is None else int(fine_k)
        self.router_backbone = dict(router_backbone or DEFAULT_ROUTER)
        self.router_steps, self.router_lr = router_steps, router_lr
        self.mixing, self.top_k, self.budget, self.accuracy_n = mixing, int(top_k), budget, int(accuracy_n)
        self.clustering: Optional[Clustering] = None
        self._router_model: Optional[torch.nn.Module] = None
        self._report: Optional[dict[str, Any]] = None
        self._tracker, self._parent_id, self._datasets = None, None, None
        self._stand_in_clustering = False

    # ------------------------------------------------------------------ config
    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg["method"]
        k = int(m.get("k", 4))
        if k < 2:
            raise ConfigError(f"method.k must be >= 2 (one expert is the monolithic baseline), got {k}")
        n = data_size_hint(cfg["data"])
        if n is not None and k > n:
            raise ConfigError(f"method.k={k} exceeds the {n} items of the data", hint="lower method.k or use more data")
        check_mixing(m.get("mixing", "top1"), int(m.get("top_k", 2)), k)
        if m.get("budget", "per_expert") not in BUDGETS:
            raise ConfigError(f"method.budget must be one of {', '.join(BUDGETS)}, got {m.get('budget')!r}")
        if m.get("budget") == "equal_total_batch" and int(cfg["train"]["batch_size"]) < k:
            raise ConfigError(f"method.budget=equal_total_batch splits train.batch_size={cfg['train']['batch_size']} "
                              f"over k={k} experts, leaving less than one item each",
                              hint=f"raise train.batch_size to a multiple of {k} or use method.budget=equal_total")
        if m.get("metric", "euclidean") not in METRICS:
            raise ConfigError(f"method.metric: {m.get('metric')!r} is not one of {', '.join(METRICS)}")
        if m.get("fine_k") is not None:
            fine_k = int(m["fine_k"])
            if fine_k <= k:
                raise ConfigError(f"method.fine_k={fine_k} must exceed method.k={k} (fine groups are merged into k coarse clusters)",
                                  hint="raise method.fine_k (seed 003: 1024 for k=8) or set method.fine_k=null for flat k-means")
            if n is not None and fine_k > n:
                raise ConfigError(f"method.fine_k={fine_k} exceeds the {n} items of the data",
                                  hint="lower method.fine_k or set it to null for flat k-means")
        if m.get("features", PIXELS) not in (PIXELS, PRECOMPUTED):
            registry("extractor").get(m["features"])
        rb = m.get("router_backbone") or DEFAULT_ROUTER
        if "name" not in rb:
            raise ConfigError("method.router_backbone.name is missing", hint="e.g. method.router_backbone.name=router")
        registry("backbone").get(rb["name"])
        for key in ("router_steps", "kmeans_iters", "accuracy_n"):
            if m.get(key) is not None and int(m[key]) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {m[key]}")

    # ------------------------------------------------------------------ units
    def store(self) -> str:
        return str(Path(self.cfg["paths"]["workdir"]) / "clusters")

    def needs_prepare(self) -> bool:
        return self.clustering is None   # the experts' data nodes name the clustering's hash

    def stand_in(self) -> "DDM":
        """Before clustering: experts on a placeholder clustering (their networks do not depend on it)."""
        if self.clustering is not None:
            return self
        other = copy.copy(self)
        other._stand_in_clustering = True
        return other

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Features -> k-means -> cluster ids, cached under ``<workdir>/clusters/<hash>/``."""
        self._datasets = datasets or DatasetCache()
        self._tracker, self._parent_id = tracker, parent_id
        data = self._datasets.get(self.cfg["data"])
        self.clustering = cluster_dataset(data, self.cfg["data"], k=self.k, features=self.features,
                                          features_kwargs=self.features_kwargs, metric=self.metric,
                                          iters=self.kmeans_iters, seed=self.kmeans_seed, store=self.store(),
                                          fine_k=self.fine_k)

    def cluster_node(self, cluster: Optional[int], labels: str) -> dict[str, Any]:
        """The data node of one cluster (or all data), naming the clustering by hash."""
        if self.clustering is None and not self._stand_in_clustering:
            raise RuntimeError("DDM units before prepare(): the experts' data come from the clustering")
        clustering = "(not yet clustered)" if self.clustering is None else self.clustering.hash
        node = {"name": "cluster_subset", "base": dict(self.cfg["data"]), "clustering": clustering,
                "store": self.store(), "cluster": cluster, "labels": labels}
        if labels == "cluster":
            node["k"] = self.k            # the router's classes, known before clustering (harness describe)
        return node

    def expert_objective(self, i: int) -> dict[str, Any]:
        """Objective node expert ``i`` trains with (homogeneous: the run's objective)."""
        return dict(self.cfg["objective"])

    def expert_backbone(self, i: int) -> dict[str, Any]:
        """Backbone node expert ``i`` trains with (homogeneous: the run's backbone)."""
        return dict(self.cfg["backbone"])

    def units(self) -> dict[str, UnitSpec]:
        expert = expert_train(self.cfg["train"], self.k, self.budget)
        units = {f"expert{i}": UnitSpec(label=f"expert{i} (cluster {i}/{self.k}, {self.expert_objective(i)['name']})",
                                        data=self.cluster_node(i, "none"), backbone=self.expert_backbone(i),
                                        objective=self.expert_objective(i), train=dict(expert))
                 for i in range(self.k)}
        train = dict(self.cfg["train"], label_dropout=0.0, steps=int(self.router_steps or self.cfg["train"]["steps"]))
        if self.router_lr is not None:
            train["lr"] = float(self.router_lr)
        units["router"] = UnitSpec(label=f"router ({self.k} clusters)", data=self.cluster_node(None, "cluster"),
                                   backbone=dict(self.router_backbone), objective=dict(ROUTER_OBJECTIVE), train=train)
        return units

    # ------------------------------------------------------------------ field
    def expert_field(self, i: int, part: tuple[torch.nn.Module, Any]) -> Field:
        """Expert ``i`` as a velocity field (its objective's own conversion)."""
        return net_field(part)

    def assemble(self, parts) -> Field:
        self._router_model = parts["router"][0]
        fields = [self.expert_field(i, parts[f"expert{i}"]) for i in range(self.k)]
        return Mixture(fields, NetRouter(self._router_model, self.k), self.mixing, self.top_k)

    # ------------------------------------------------------------------ record
    def router_report(self) -> Optional[dict[str, Any]]:
        """Router accuracy vs t on held-out items (ids by nearest centroid), JSON + PNG per router unit beside the clustering."""
        if self._router_model is None or self.clustering is None:
            return None
        if self._report is None:
            held = self._heldout()
            x1 = held.x[: self.accuracy_n]
            feats = features_of(held.head(len(x1)), build_feature_extractor(self.features, self.features_kwargs))
            ids = assign(feats, torch.from_numpy(self.clustering.centroids), self.metric)
            curve = accuracy_curve(NetRouter(self._router_model, self.k), x1, ids, ACCURACY_TS)
            out = Path(self.store()) / self.clustering.hash / f"router_{self.units()['router'].hash}"
            out.mkdir(parents=True, exist_ok=True)
            (out / "curve.json").write_text(json.dumps(curve, indent=1))
            png = plot_accuracy_curve(curve, out / "curve.png", f"router, k={self.k} ({self.features})")
            self._report = {"curve": curve, "n": len(x1), "split": held.info.get("split"), "png": str(png),
                            "router_unit": self.units()["router"].hash}
            if self._tracker is not None and self._parent_id is not None:
                self._tracker.log_metrics(self._parent_id, {f"router_acc_t{c['t']:.1f}": c["accuracy"] for c in curve})
                self._tracker.log_artifact(self._parent_id, png, "router")
        return self._report

    def _heldout(self):
        """The test split of the data when the data have one, else the training data."""
        node = dict(self.cfg["data"])
        try:
            return self._datasets.get(dict(node, split="test"))
        except ConfigError:
            return self._datasets.get(node)

    def describe(self) -> dict[str, Any]:
        out = {"k": self.k, "mixing": self.mixing, "top_k": self.top_k, "budget": self.budget,
               "features": self.features, "metric": self.metric}
        if self.clustering is not None:
            out.update(clustering=self.clustering.hash, cluster_counts=self.clustering.counts,
                       feature_weights_sha256=self.clustering.provenance["features"]["weights_sha256"])
        report = self.router_report()
        if report is not None:
            out["router_accuracy"] = report["curve"]
        return out
