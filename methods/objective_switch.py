"""Two experts on the same data, one DDPM-eps (converted to velocity) and one flow matching, switched at a
native-time threshold: seed 003's conversion study (Sec. 3.3, Tab. 3), threshold analysis (Sec. 3.3.3,
Fig. 4) and expert-ordering ablation (Sec. 7.3, Fig. 13).

Seed 003, Sec. 3.3.1: "a deterministic router switches between experts at a native-time threshold
t = 0.5, allocating high-noise timesteps (t > 0.5) to FM experts and low-noise timesteps to DDPM
experts".  Here that is a :class:`~harness.field.mixture.ThresholdRouter` with Top-1 mixing.  The rows of
Tab. 3 are sampling-time choices over the same two units:

* ``use: fm``        -- the FM expert alone ("FM"; the same unit as ``method=monolithic``)
* ``use: ddpm``      -- the DDPM expert alone through the conversion ("DDPM -> FM")
* ``use: combined``  -- the switch ("Combined"); ``method.ddpm_objective.schedule`` picks "same
  schedule" (``linear_path``: the DDPM expert on FM's own path) or "diff. schedules" (``cosine``).

``low_noise: ddpm`` is the seed's default ordering (FM denoises first, then DDPM: "FM -> DDPM" in
Sec. 7.3); ``low_noise: fm`` reverses it.  Neither key changes a unit, so a threshold sweep trains two
units once and only re-samples.

The seed states its threshold in two conventions, which read the same number in opposite directions:

* ``threshold_convention: native`` (default; Sec. 3.3.1 and Fig. 4): tau is a point of the seed's native
  time (t' = 1 noise): "for timesteps t' <= t, the DDPM expert is used".  The low-noise expert answers for
  t' <= tau, i.e. harness t >= 1 - tau; a *lower* tau leaves *less* of the trajectory to the low-noise
  (second) expert, so Fig. 4's tau = 0.2 is "FM-dominated".
* ``threshold_convention: trajectory`` (Sec. 7.3 and Fig. 13): tau is the fraction of the trajectory,
  counted from the noise, after which the second expert takes over: "lower thresholds (tau = 0.3) favor
  earlier transitions, allowing the second expert to contribute more".  The switch is then at native
  t' = 1 - tau (harness t = tau), and Fig. 13's tau = 0.3 is native 0.7.

The Field only ever sees the native threshold (:attr:`native_threshold`, recorded with the run), so a
Fig. 13 row and the Fig. 4 row of the same native point are the same sampler and never mirrored.

"Combined (same schedule)" (Tab. 3, and Fig. 4's "converted DDPM and native FM experts under the same
cosine schedule") pairs the seed003-converted cosine DDPM expert with an FM expert trained on the same
cosine schedule and answering natively (``objective=flow_matching_cosine objective.conversion=native``):
both fields then follow the cosine path's marginals.  "Diff. schedules" pairs it with the linear-path FM
expert (``objective=flow_matching``).
"""
from __future__ import annotations

from typing import Any, Optional

from harness.core.errors import ConfigError
from harness.field import Field, Net
from harness.api.method import Method, net_field
from harness.field.mixture import Mixture, ThresholdRouter
from harness.objectives import build_objective
from harness.core.registry import register
from harness.train.units import UnitSpec, unit_from_config
from harness.methods.hetero_ddm import DEFAULT_DDPM, check_ddpm_node, training_node

USES = ("combined", "fm", "ddpm")
LOW_NOISE = ("ddpm", "fm")
CONVENTIONS = ("native", "trajectory")


def native_threshold(threshold: float, convention: str = "native") -> float:
    """The seed-native switch point t' (1 = noise) of a threshold stated in ``convention`` (see the module)."""
    return float(threshold) if convention == "native" else 1.0 - float(threshold)


@register("method", "objective_switch")
class ObjectiveSwitch(Method):
    def __init__(self, cfg, threshold: float = 0.5, use: str = "combined", low_noise: str = "ddpm",
                 ddpm_objective: Optional[dict] = None, threshold_convention: str = "native") -> None:
        super().__init__(cfg)
        self.threshold, self.use, self.low_noise = float(threshold), use, low_noise
        self.threshold_convention = threshold_convention
        self.native_threshold = native_threshold(threshold, threshold_convention)
        self.ddpm_objective = dict(DEFAULT_DDPM, **(ddpm_objective or {}))

    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg["method"]
        if m.get("use", "combined") not in USES:
            raise ConfigError(f"method.use must be one of {', '.join(USES)}, got {m.get('use')!r}",
                              hint="seed 003 Tab. 3 rows: fm (FM), ddpm (DDPM -> FM), combined")
        if m.get("low_noise", "ddpm") not in LOW_NOISE:
            raise ConfigError(f"method.low_noise must be ddpm or fm, got {m.get('low_noise')!r}")
        if m.get("threshold_convention", "native") not in CONVENTIONS:
            raise ConfigError(f"method.threshold_convention must be native or trajectory, got {m.get('threshold_convention')!r}",
                              hint="native: seed 003 Sec. 3.3 / Fig. 4 (t' <= tau -> low-noise expert); "
                                   "trajectory: Sec. 7.3 / Fig. 13 (fraction of the trajectory before the switch)")
        tau = float(m.get("threshold", 0.5))
        if not 0.0 <= tau <= 1.0:
            raise ConfigError(f"method.threshold must lie in [0, 1] (seed 003's native time, 1 = noise), got {tau}")
        check_ddpm_node(dict(DEFAULT_DDPM, **(m.get("ddpm_objective") or {})))
        if cfg["objective"]["name"] == "ddpm":
            raise ConfigError("objective: objective_switch pairs a DDPM expert with the run's objective, which is ddpm too",
                              hint="use objective=flow_matching (seed 003's FM expert)")

    @classmethod
    def sampled_objective(cls, cfg):
        """``use: ddpm`` samples the DDPM expert alone: Tab. 3's "Native DDPM" row is it under ``sampler=ddpm``."""
        m = cfg["method"]
        if m.get("use", "combined") == "ddpm":
            return dict(DEFAULT_DDPM, **(m.get("ddpm_objective") or {}))
        return cfg["objective"]

    def units(self) -> dict[str, UnitSpec]:
        fm = unit_from_config(self.cfg, label="FM expert")
        backbone = dict(self.cfg["backbone"])
        if backbone.get("time_map"):   # the DDPM expert feeds its own tau, DiT's step / 1000 (seed 003 Eq. 21, 2nd case)
            backbone.pop("time_map")
        ddpm = UnitSpec(label=f"DDPM expert ({self.ddpm_objective['schedule']})", data=dict(self.cfg["data"]),
                        backbone=backbone, objective=training_node(self.ddpm_objective),
                        train=dict(self.cfg["train"]))
        return {"combined": {"ddpm": ddpm, "fm": fm}, "fm": {"fm": fm}, "ddpm": {"ddpm": ddpm}}[self.use]

    def _ddpm_field(self, part) -> Field:
        model, _ = part
        return Net(model, build_objective(self.ddpm_objective))      # Eq. 24 + Sec. 8 safeguards

    def assemble(self, parts) -> Field:
        if self.use == "fm":
            return net_field(parts["fm"])
        if self.use == "ddpm":
            return self._ddpm_field(parts["ddpm"])
        fields = [self._ddpm_field(parts["ddpm"]), net_field(parts["fm"])]     # expert 0 = DDPM, 1 = FM
        low, high = (0, 1) if self.low_noise == "ddpm" else (1, 0)
        return Mixture(fields, ThresholdRouter(self.native_threshold, low_noise=low, high_noise=high), "top1")

    def describe(self) -> dict[str, Any]:
        return {"use": self.use, "threshold": self.threshold, "threshold_convention": self.threshold_convention,
                "native_threshold": self.native_threshold, "low_noise": self.low_noise,
                "ordering": "FM -> DDPM" if self.low_noise == "ddpm" else "DDPM -> FM",
                "ddpm_objective": self.ddpm_objective}
