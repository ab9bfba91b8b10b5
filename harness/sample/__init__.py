"""Samplers (Euler, Heun, dopri5) over any Field, and seed-per-sample generation."""
from harness.sample.ode import Counted, Dopri5, Euler, Heun
from harness.sample.seeded import generate, seeded_noise_and_labels, to_uint8

__all__ = ["Counted", "Dopri5", "Euler", "Heun", "generate", "seeded_noise_and_labels", "to_uint8"]
