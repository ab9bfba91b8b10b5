"""Samplers over any Field, and seed-per-sample generation (registry kind ``"sampler"``, ``harness/conf/sampler/``).

| sampler | module | what | NFE |
|---|---|---|---|
| ``euler``, ``heun`` | ``ode`` | fixed-grid ODE integrators of the velocity (EDM's Heun, Alg. 1 without churn) | steps, 2 steps |
| ``dopri5`` | ``ode`` | adaptive Dormand-Prince (torchdiffeq), SiT's ODE sampler (SiT-XL/2 FID 2.15) | adaptive |
| ``sde`` | ``sde`` | SiT's Euler-Maruyama SDE sampler: score from velocity, ``sigma`` diffusion, ``Mean`` last step (SiT-XL/2 2.06) | steps |
| ``ddpm`` | ``ddpm`` | DiT's ancestral sampler: respaced DDPM steps on the field's native eps, learned-range variance (DiT-XL/2 2.27) | steps |

ODE samplers see only velocities, so any method composes with them.  ``ddpm`` asks the field for its native
parameterisation (:meth:`harness.field.Field.predict`) and refuses a field that cannot answer eps.  The
stochastic samplers (``stochastic = True``) draw their step noise through
:class:`~harness.sample.seeded.PerSampleNoise` from each sample's own seed, so sample sets do not depend on
batch size or world size.
"""
from harness.sample.ddpm import DDPMAncestral
from harness.sample.ode import Counted, Dopri5, Euler, Heun
from harness.sample.sde import EulerMaruyama
from harness.sample.seeded import PerSampleNoise, generate, seeded_noise_and_labels, to_uint8

__all__ = ["Counted", "DDPMAncestral", "Dopri5", "Euler", "EulerMaruyama", "Heun", "PerSampleNoise", "generate",
           "seeded_noise_and_labels", "to_uint8"]
