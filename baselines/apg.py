"""Adaptive Projected Guidance (Sadat, Hilliges & Weber, ICLR 2025; seed 004 Tab. 2's "+APG [57]" row).

CFG's update, taken on the denoised estimate D(x) and reshaped (their Sec. 3-4):

* ``diff = D_cond - D_null``, with a momentum running average ``diff <- diff + beta * running`` (beta < 0
  pushes against the previous steps' update),
* rescaled to norm at most ``norm_threshold`` per sample (0: off),
* split into its component parallel to ``D_cond`` and the orthogonal rest; ``update = orth + eta * par``
  (the parallel part is what oversaturates, so ``eta = 0`` drops it),
* ``D = D_cond + (omega - 1) update``.

On the harness's linear path (``x_t = t x1 + (1 - t) x0``, t = 0 noise) the denoised estimate of a velocity is
``D = x + (1 - t) v`` (:func:`harness.objectives.conversions.x1_from_velocity`), so the guided velocity is
``v_cond + (omega - 1) update / (1 - t)``.  With ``eta = 1``, ``momentum = 0`` and no threshold this is CFG
exactly (``tests/test_apg.py``).  Seed 004 gives no APG hyper-parameters; the defaults (eta 0, momentum -0.75,
threshold 2.5) are those TREAD's routing code uses with APG, in its own latent scale: an assumption, recorded.
Cost: two forwards per guided step, as CFG (Tab. 2: 228.84 GFLOPs).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from harness.api.guidance import ScaledGuidance, require_null_class
from harness.core.errors import ConfigError
from harness.core.registry import register
from harness.field.base import batch_times
from harness.field.guided import Branch, Guided
from harness.objectives.base import VELOCITY, Parameterisation


class ProjectedGuided(Guided):
    """:class:`Guided` whose combination is APG's on ``D = x + (1 - t) v``, with the momentum state of one trajectory.

    The running average restarts when a call's t is below the previous call's (a new trajectory: t runs
    from noise, 0, to data, 1) or the batch shape changes.  Guidance runs on velocities, whatever the
    branches' native parameterisation, so the DDPM-eps fast path of CFG does not apply.
    """

    def __init__(self, strong: Branch, weak: Branch, scale: float, *, eta: float, momentum: float, norm_threshold: float,
                 **kwargs: Any) -> None:
        super().__init__(strong, weak, scale, **kwargs)
        self.eta, self.momentum, self.norm_threshold = float(eta), float(momentum), float(norm_threshold)
        self._running: Optional[torch.Tensor] = None
        self._last_t: Optional[float] = None

    @property
    def parameterisation(self) -> Parameterisation:
        return VELOCITY

    def _with_momentum(self, diff: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_min = float(t.min())
        if self._running is None or self._running.shape != diff.shape or (self._last_t is not None and t_min < self._last_t):
            self._running = torch.zeros_like(diff)
        self._last_t = float(t.max())
        self._running = diff + self.momentum * self._running
        return self._running

    def apg_update(self, d_cond: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        """``orth + eta * par`` of ``diff`` (norm-capped) with respect to ``d_cond``, per sample, in float64."""
        dims = list(range(1, diff.dim()))
        if self.norm_threshold > 0:
            norm = diff.flatten(1).norm(dim=1).reshape(-1, *[1] * len(dims))
            diff = diff * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        d, u = diff.double(), torch.nn.functional.normalize(d_cond.double().flatten(1), dim=1).reshape(d_cond.shape)
        par = (d * u).sum(dim=dims, keepdim=True) * u
        return ((d - par) + self.eta * par).to(diff.dtype)

    def velocity(self, x, t, y=None):
        call, self.calls = self.calls, self.calls + 1
        t = batch_times(x, t)
        v_cond = self.branch(self.strong, x, t, y, call)
        on = self.guided_at(t)
        meta = x.device.type == "meta"
        if not meta and not bool(on.any()):
            return v_cond
        v_null = self.branch(self.weak, x, t, y, call)
        if meta:
            return v_cond + (v_cond - v_null)                              # shapes and FLOPs only
        s = (1 - t).to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        d_cond = x + s * v_cond
        diff = self._with_momentum(s * (v_cond - v_null), t)
        guided = v_cond + (self.scale - 1) * self.apg_update(d_cond, diff) / s.clamp_min(1e-6)
        return guided if bool(on.all()) else torch.where(on.reshape(-1, *[1] * (x.dim() - 1)), guided, v_cond)


@register("guidance", "apg")
class APG(ScaledGuidance):
    def __init__(self, cfg: Mapping[str, Any], scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 eta: float = 0.0, momentum: float = -0.75, norm_threshold: float = 2.5) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed)
        self.eta, self.momentum, self.norm_threshold = float(eta), float(momentum), float(norm_threshold)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_null_class(cfg)
        g = cfg["guidance"]
        if float(g.get("norm_threshold", 2.5)) < 0:
            raise ConfigError(f"guidance.norm_threshold must be >= 0 (0: no rescaling), got {g.get('norm_threshold')}")
        if not -1.0 < float(g.get("momentum", -0.75)) <= 1.0:
            raise ConfigError(f"guidance.momentum must be in (-1, 1] (APG's beta; negative damps), got {g.get('momentum')}")

    def wrap(self, field, parts, num_classes):
        return ProjectedGuided(Branch(field, "cond", stream=0), Branch(field, "null", stream=1), self.scale,
                               eta=self.eta, momentum=self.momentum, norm_threshold=self.norm_threshold,
                               interval=self.interval, num_classes=num_classes, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "eta": self.eta, "momentum": self.momentum, "norm_threshold": self.norm_threshold}
