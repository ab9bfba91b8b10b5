"""Time splitting (seed 000, CBS): complexity monitors over a Field and de Boor equidistribution."""
from harness.split.equidistribution import boundaries_from_monitor

__all__ = ["boundaries_from_monitor"]
