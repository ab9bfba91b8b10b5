"""Training objectives and the conversions between their conventions (DESIGN.md: one velocity convention)."""
from harness.objectives.base import Objective, build_objective

__all__ = ["Objective", "build_objective"]
