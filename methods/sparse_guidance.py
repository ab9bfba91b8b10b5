"""Sparse Guidance (seed 004): guide with two *conditional* predictions of the same token-sparse
network at sparsities 0 <= gamma_strong < gamma_weak < 1 (Eq. 6-7), and its combinations
with CFG (Eq. 8: the weak branch also gets the null class) and AutoGuidance (Sec. 4.3: the
weak branch is the AG model at gamma_weak).

The network must have been trained with token sparsity (routing or masking,
``backbone.token_selector``): SG copies the train-time sparsity to inference (Sec. 3.2), and
on a dense-trained backbone gamma changes nothing, so such configs are refused.
"""
from __future__ import annotations

from typing import Optional

from harness.baselines.autoguidance import WEAK_ROLE, WeakModelUnit
from harness.field.guided import Branch
from harness.api.guidance import ScaledGuidance, check_gammas, require_null_class, require_sparse_training
from harness.api.method import net_field
from harness.core.registry import register


@register("guidance", "sparse")
class SparseGuidance(ScaledGuidance):
    """SG (Eq. 7): ``D(c; gamma_weak) + omega (D(c; gamma_strong) - D(c; gamma_weak))``."""

    gammas_ordered = True   # seed 004 requires gamma_strong < gamma_weak for SG (one model, two sparsities)

    weak_label = "cond"

    def __init__(self, cfg, scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 gamma_strong: float = 0.0, gamma_weak: float = 0.5) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed)
        self.gamma_strong, self.gamma_weak = float(gamma_strong), float(gamma_weak)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        check_gammas(cfg, ordered=cls.gammas_ordered)
        require_sparse_training(cfg)

    def weak_field(self, field, parts):
        return field

    def wrap(self, field, parts, num_classes):
        strong = Branch(field, "cond", self.gamma_strong, stream=0)
        weak = Branch(self.weak_field(field, parts), self.weak_label, self.gamma_weak, stream=1)
        return self.guided(strong, weak, num_classes)

    def describe(self) -> dict:
        return {**super().describe(), "gamma_strong": self.gamma_strong, "gamma_weak": self.gamma_weak}


@register("guidance", "cfg_sparse")
class CFGSparseGuidance(SparseGuidance):
    """CFG + SG (Eq. 8): the weak branch is unconditional *and* sparser."""

    weak_label = "null"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        require_null_class(cfg)


@register("guidance", "ag_sparse")
class AGSparseGuidance(WeakModelUnit, SparseGuidance):
    """AG + SG (Sec. 4.3, Fig. 7-8; Tab. 2's SG_FID): the weak branch is the AG model at gamma_weak."""

    gammas_ordered = False  # the weak branch is another (weaker) model: the seed states the ordering only for SG

    def __init__(self, cfg, scale: float = 1.5, interval: list[float] = (0.0, 1.0), seed: int = 0,
                 gamma_strong: float = 0.0, gamma_weak: float = 0.5, weak_steps: Optional[int] = None,
                 weak_backbone: Optional[dict] = None) -> None:
        super().__init__(cfg, scale=scale, interval=interval, seed=seed, gamma_strong=gamma_strong, gamma_weak=gamma_weak)
        self.weak_steps, self.weak_backbone = weak_steps, dict(weak_backbone or {})

    def weak_field(self, field, parts):
        return net_field(parts[WEAK_ROLE])

    def describe(self) -> dict:
        return {**super().describe(), "weak_steps": self.weak_steps, "weak_backbone": self.weak_backbone}


@register("sweep_constraint", "gflops_per_nfe_seed004")
def gflops_per_nfe_seed004(cfg) -> float:
    """Budget of ``sweeps/sg_triplet_search.yaml``: GFLOPs per guided NFE in seed 004's convention (Tab. 2),
    counted on the meta device before a trial trains or samples anything."""
    from harness.pipeline.cost import config_cost

    return float(config_cost(cfg)["gflops_per_nfe_seed004"])


@register("sweep_constraint", "gflops_per_image_seed004")
def gflops_per_image_seed004(cfg) -> float:
    """GFLOPs per image (all NFE of the sampler) in seed 004's convention."""
    from harness.pipeline.cost import config_cost

    return float(config_cost(cfg)["gflops_per_image_seed004"])
