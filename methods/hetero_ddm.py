"""Heterogeneous DDM (seed 003): some experts train DDPM-epsilon, the rest the run's flow-matching objective.

Seed 003, Sec. 2.2-2.3 and Sec. 6.2: experts 0 and 3 of 8 train with DDPM on a cosine
schedule (Eq. 3, 26), the others with linear-path flow matching (Eq. 4); at sampling time
each DDPM expert's epsilon is converted to a velocity (Eq. 5-8, 23-25 with the Sec. 8
safeguards: x0_hat clamped to [-20, 20], alpha_safe = max(alpha, 0.01), the damping s(t))
and mixed with the FM experts by the router (Eq. 1).  The conversion lives in
``harness.objectives`` (``ddpm`` objective, ``conversion: seed003``) and is reused here.

Time map between conventions: the seed's t' runs data (0) -> noise (1); the harness's t
runs noise (0) -> data (1), so the DDPM network sees tau = 1 - t (``DDPMEpsilon``), and a
DiT with a 1000-step embedding table would see round(999 tau) (Eq. 21,
``harness.objectives.conversions.ddpm_timestep``).

The conversion keys (``conversion``, ``clamp``, ``alpha_min``, ``damping``) do not change a
DDPM expert's weights, so they are left out of its unit: switching conversions at sampling
time reuses the trained experts.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from harness.baselines.ddm import DDM
from harness.core.errors import ConfigError
from harness.field import Field, Net
from harness.objectives import build_objective
from harness.objectives.ddpm import DDPMEpsilon
from harness.core.registry import register

DEFAULT_DDPM = {"name": "ddpm", "schedule": "cosine", "conversion": "seed003", "clamp": 20.0, "alpha_min": 0.01,
                "damping": "eq31", "time_sampler": "uniform", "time_sampler_kwargs": {}}


def training_node(node: dict[str, Any]) -> dict[str, Any]:
    """The part of a DDPM objective node that determines the weights (what the unit hashes)."""
    return {k: v for k, v in node.items() if k not in DDPMEpsilon.UNHASHED_KEYS}


def check_ddpm_node(node: dict[str, Any], key: str = "method.ddpm_objective") -> None:
    """A DDPM expert's objective must be ``ddpm`` with a known schedule (else it cannot be converted)."""
    if node.get("name") != "ddpm":
        raise ConfigError(f"{key}.name must be ddpm, got {node.get('name')!r}")
    try:
        build_objective(node)
    except ConfigError as err:
        raise ConfigError(err.message.replace("objective.", f"{key}.", 1), hint=err.hint) from None


@register("method", "hetero_ddm")
class HeteroDDM(DDM):
    def __init__(self, cfg, ddpm_experts: Optional[list[int]] = None, ddpm_objective: Optional[dict] = None,
                 **kwargs: Any) -> None:   # DDM's keys (k, features, mixing, budget, ...): validation reads the hierarchy
        super().__init__(cfg, **kwargs)
        self.ddpm_experts = sorted(int(i) for i in (ddpm_experts if ddpm_experts is not None else [0]))
        self.ddpm_objective = dict(DEFAULT_DDPM, **(ddpm_objective or {}))

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        m = cfg["method"]
        k = int(m.get("k", 4))
        experts = list(m.get("ddpm_experts") or [0])
        if len(set(experts)) != len(experts) or any(not 0 <= int(i) < k for i in experts):
            raise ConfigError(f"method.ddpm_experts={experts} must be distinct expert ids in [0, {k})",
                              hint="e.g. method.ddpm_experts=[0,3] for seed 003's 2DDPM:6FM with k=8")
        check_ddpm_node(dict(DEFAULT_DDPM, **(m.get("ddpm_objective") or {})))
        if cfg["objective"]["name"] == "ddpm":
            raise ConfigError("objective: hetero_ddm mixes DDPM experts with the run's objective, which is ddpm too",
                              hint="use objective=flow_matching (seed 003's FM experts) or method=ddm")

    def expert_objective(self, i: int) -> dict[str, Any]:
        return training_node(self.ddpm_objective) if i in self.ddpm_experts else dict(self.cfg["objective"])

    def expert_backbone(self, i: int) -> dict[str, Any]:
        """A DDPM expert feeds the backbone its own tau, DiT's step / 1000: no time map (seed 003 Eq. 21, second case).

        ``backbone.time_map: eq21`` (the first case, round(999 t) for FM experts) stays on the FM experts only.
        """
        node = super().expert_backbone(i)
        if i in self.ddpm_experts:
            node.pop("time_map", None)
        return node

    def expert_field(self, i: int, part: tuple[torch.nn.Module, Any]) -> Field:
        """DDPM experts answer through the configured conversion (seed 003, Eq. 24 + Sec. 8)."""
        model, objective = part
        if i in self.ddpm_experts:
            return Net(model, build_objective(self.ddpm_objective))
        return Net(model, objective)

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), ddpm_experts=self.ddpm_experts, ddpm_objective=self.ddpm_objective)


def converted_unit_field(spec, workdir, **conversion: Any) -> Field:
    """A finished DDPM unit's checkpoint sampled as a velocity field, without retraining (seed 003, Sec. 3.3).

    ``conversion`` overrides the sampling-only keys (``conversion``, ``clamp``, ``alpha_min``,
    ``damping``); the checkpoint's own schedule is kept, and one the harness does not know
    (it could not be converted) is a ConfigError before any weights are read.
    """
    from harness.train import load_unit_field_parts

    bad = [k for k in conversion if k not in DDPMEpsilon.UNHASHED_KEYS]
    if bad:
        raise ConfigError(f"objective.{bad[0]}: not a conversion key",
                          hint=f"expected one of {', '.join(DDPMEpsilon.UNHASHED_KEYS)}")
    node = dict(spec.objective, **conversion)
    check_ddpm_node(node, key="objective")
    model, _, _ = load_unit_field_parts(spec, workdir)
    return Net(model, build_objective(node))
