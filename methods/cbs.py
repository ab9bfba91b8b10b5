"""CBS: complexity-balanced splitting (seed 000): experts on intervals of equal monitor mass.

The DAG of seed 000, Sec. 3.3-3.4: aux model (10 % of the data, content-hashed unit) ->
monitor curve (path acceleration, Eq. 14, by default) -> equidistributed boundaries ->
N experts, each trained only on its interval (Alg. 1's ``sample_t(bounds[i], bounds[i+1])``,
here as independent units sharing the seed, so CBS and the naive split see paired draws) ->
``Piecewise``.  CBS is the naive split with other boundaries: it subclasses ``NaiveSplit`` and
only decides them (:meth:`CBS.prepare`).  ``boundaries`` overrides the computed ones
(boundary-perturbation sweeps); its sweep deriver (seed 000 Tab. 5) lives here too.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

from harness.baselines.naive_split import NaiveSplit
from harness.config import hydra_value
from harness.core.errors import ConfigError
from harness.core.intervals import check_boundaries, uniform_boundaries
from harness.core.registry import register, registry
from harness.pipeline.split import aux_unit, cached_split
from harness.train.units import done_record


@register("method", "cbs")
class CBS(NaiveSplit):
    def __init__(self, cfg, monitor: str = "acceleration", boundaries: Optional[list[float]] = None,
                 **kwargs: Any) -> None:   # n, budget, training: NaiveSplit's keys (validation reads the hierarchy)
        super().__init__(cfg, **kwargs)
        self.monitor = monitor
        self.boundaries = None if boundaries is None else check_boundaries(boundaries, self.n, "method.boundaries")
        self.split_result: Optional[dict[str, Any]] = None

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        super().check_config(cfg)
        m = cfg["method"]
        if m.get("boundaries") is not None:
            check_boundaries(m["boundaries"], int(m.get("n", cls.default_n)), "method.boundaries")
        registry("monitor").get(m.get("monitor", "acceleration"))

    def split_config(self) -> dict[str, Any]:
        """The run's config with the split node set to this method's N and monitor."""
        return dict(self.cfg, split=dict(self.cfg["split"], n=self.n, monitor=self.monitor))

    def needs_prepare(self) -> bool:
        return self.boundaries is None

    def prepare(self, *, datasets=None, tracker=None, parent_id: Optional[str] = None) -> None:
        """Train/reuse the aux model and compute the boundaries (cached under the split key ``harness split`` uses)."""
        if self.boundaries is not None:
            return
        self.split_result = cached_split(self.split_config(), datasets=datasets, tracker=tracker, parent_id=parent_id)
        self.boundaries = list(self.split_result["boundaries"])

    def stand_in(self) -> "CBS":
        """Before the aux model has run: the uniform split (the experts' sizes do not depend on the boundaries)."""
        if self.boundaries is not None:
            return self
        other = copy.copy(self)
        other.boundaries = uniform_boundaries(self.n)
        return other

    def units(self):
        if self.boundaries is None:
            raise RuntimeError("CBS.units() before prepare(): the boundaries come from the aux model")
        return super().units()

    def describe(self) -> dict:
        out = {**super().describe(), "monitor": self.monitor}
        if self.split_result:
            out.update(split_field=self.split_result["field"], aux_unit=self.split_result["aux_unit"],
                       monitor_cost=self.split_result["cost"])
        return out


# ------------------------------------------------------------------ seed 000, Table 5 as a sweep
Derived = list[tuple[dict[str, str], dict[str, Any]]]


def cbs_boundaries(cfg: Mapping[str, Any], *, dry_run: bool = False) -> tuple[list[float], str]:
    """CBS's boundaries for ``cfg`` (method=cbs) and where they came from.

    ``method.boundaries`` if given, else the monitor split (``harness split``'s computation, cached;
    the aux model is a content-hashed unit).  A dry run trains nothing: while the aux model is
    untrained it returns the uniform split as a stand-in, so every cell's keys can still be validated.
    """
    if cfg["method"]["name"] != CBS.registered_name:
        raise ConfigError(f"derive: cbs_boundary_perturb needs method={CBS.registered_name} in base, "
                          f"got method={cfg['method']['name']}")
    method = CBS(cfg, **{k: v for k, v in cfg["method"].items() if k != "name"})
    if method.boundaries is not None:
        return list(method.boundaries), "method.boundaries"
    split_cfg = method.split_config()
    untrained = split_cfg["split"]["field"] == "aux" and done_record(aux_unit(split_cfg).directory(cfg["paths"]["workdir"])) is None
    if dry_run and untrained:
        return uniform_boundaries(method.n), "uniform stand-in (dry run: the aux model is not trained yet)"
    method.prepare()
    return list(method.boundaries), f"CBS monitor {method.monitor} ({split_cfg['split']['field']} field)"


@register("sweep_deriver", "cbs_boundary_perturb")
def cbs_boundary_perturb(cfg: Mapping[str, Any], deltas: list[float], include_base: bool = True,
                         *, dry_run: bool = False) -> Derived:
    """Seed 000, Table 5: move each CBS boundary separately by each delta; the rest stay put.

    Cells whose perturbed boundaries leave (0, 1) or stop increasing are dropped (they are not
    splits).  Unchanged boundaries keep their exact float value, so experts whose interval did not
    move have the same unit hash as in the base cell and are reused, not retrained (DESIGN.md).
    """
    if not deltas or any(d == 0 for d in deltas):
        raise ConfigError(f"derive.deltas: expected non-zero perturbations, got {deltas!r}",
                          hint="e.g. deltas: [-0.05, 0.05]; the base cell is included with include_base: true")
    base, source = cbs_boundaries(cfg, dry_run=dry_run)
    cells: Derived = []
    if include_base:
        cells.append(({"method.boundaries": hydra_value(base)}, {"boundary": "-", "delta": 0.0, "boundaries": base, "source": source}))
    for i in range(len(base)):
        for d in deltas:
            moved = list(base)
            moved[i] = round(base[i] + float(d), 10)
            try:
                check_boundaries(moved, len(base) + 1)
            except ConfigError:
                continue
            cells.append(({"method.boundaries": hydra_value(moved)},
                          {"boundary": f"b{i + 1}", "delta": float(d), "boundaries": moved}))
    return cells
