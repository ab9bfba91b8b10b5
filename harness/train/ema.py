"""EDM2's power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving
the Training Dynamics of Diffusion Models", Sec. 3 and App. C; the maths of NVlabs/edm2 ``training/phema.py``).

Why not a fixed decay: with ``ema_decay = 0.999`` a 400-step run samples from weights that are still ~67 %
the initialisation (0.999^400), while a 400K-step run averages over the last ~1 %.  A power-function profile
averages the iterates theta_1..theta_T with weights proportional to i^gamma, so its length is a *fraction* of
training, given by its relative standard deviation sigma_rel (EDM2's ``std``, e.g. 0.05 and 0.10), and it
works at every schedule length.  The update after step t (1-based) is

    ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t,   beta_t = (1 - 1/t)^(gamma + 1)        (EDM2 Eq. 3-4)

whose averaging weights are closed-form:  ema_T = sum_i w_i theta_i  with
w_i = (i^(gamma+1) - (i-1)^(gamma+1)) / T^(gamma+1)  (they telescope to 1, and the first k iterates weigh
(k/T)^(gamma+1) together).  Snapshots of each tracked profile at a few steps let any other sigma_rel at any
end step be reconstructed afterwards as a least-squares combination of them (EDM2's post-hoc EMA), so EMA
length becomes a sampling-time key a sweep varies without retraining.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from harness.core.errors import CheckpointError
from harness.core.files import write_atomic


def std_to_exp(std: float) -> float:
    """gamma of the power-function profile whose relative standard deviation is ``std`` (largest real root)."""
    t = float(std) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def exp_to_std(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    g = float(gamma)
    return float(np.sqrt((g + 1) / (g + 2) ** 2 / (g + 3)))


def beta(std: float, step: int) -> float:
    """The EMA coefficient after step ``step`` (1-based): (1 - 1/step)^(gamma + 1); 0 at step 1."""
    return (1.0 - 1.0 / float(step)) ** (std_to_exp(std) + 1.0)


def averaging_weights(std: float, steps: int) -> np.ndarray:
    """w_i, i = 1..steps: the weight of iterate theta_i in the profile's EMA after ``steps`` steps."""
    e = std_to_exp(std) + 1.0
    i = np.arange(1, steps + 1, dtype=np.float64)
    return (i ** e - (i - 1) ** e) / float(steps) ** e


def correlation(a_step: np.ndarray, a_std: np.ndarray, b_step: np.ndarray, b_std: np.ndarray) -> np.ndarray:
    """Inner products of two power-function profiles (continuous-time, EDM2 App. C.2): the Gram entries of the fit."""
    a_exp = np.vectorize(std_to_exp)(a_std)
    b_exp = np.vectorize(std_to_exp)(b_std)
    ratio = a_step / b_step
    t_exp = np.where(a_step < b_step, b_exp, -a_exp)
    t_max = np.maximum(a_step, b_step)
    return (a_exp + 1) * (b_exp + 1) * ratio ** t_exp / ((a_exp + b_exp + 1) * t_max)


def posthoc_coefficients(in_steps: Sequence[int], in_stds: Sequence[float], out_step: int, out_std: float) -> np.ndarray:
    """Coefficients c (one per snapshot) with sum_i c_i snapshot_i ~ the (out_step, out_std) profile.

    Least squares in the space of averaging-weight functions (EDM2 App. C.3): solve A c = b with A the
    snapshots' Gram matrix and b their inner products with the target, then normalise to sum 1.
    """
    s = np.asarray(in_steps, dtype=np.float64)
    d = np.asarray(in_stds, dtype=np.float64)
    A = correlation(s[:, None], d[:, None], s[None, :], d[None, :])
    b = correlation(s, d, np.float64(out_step), np.float64(out_std))
    c = np.linalg.lstsq(A, b, rcond=None)[0]
    return c / c.sum()


class PowerEMA:
    """One tracked profile per ``stds`` entry; :meth:`update` after every optimizer step (1-based ``step``)."""

    def __init__(self, model: torch.nn.Module, stds: Iterable[float]) -> None:
        self.stds = [float(s) for s in stds]
        self.params = list(model.parameters())
        self.profiles = [[p.detach().clone() for p in self.params] for _ in self.stds]

    @torch.no_grad()
    def update(self, step: int) -> None:
        for std, ema in zip(self.stds, self.profiles):
            torch._foreach_lerp_(ema, self.params, 1.0 - beta(std, step))

    def state_dict(self, model: torch.nn.Module, k: int) -> dict[str, torch.Tensor]:
        """Profile ``k`` as a state dict of ``model`` (its parameters replaced, its buffers kept)."""
        state = model.state_dict()
        names = [n for n, _ in model.named_parameters()]
        return {**state, **{n: t.clone() for n, t in zip(names, self.profiles[k])}}

    def load(self, model: torch.nn.Module, states: Sequence[dict[str, torch.Tensor]]) -> None:
        names = [n for n, _ in model.named_parameters()]
        for ema, state in zip(self.profiles, states):
            for t, n in zip(ema, names):
                t.copy_(state[n])


def combine(states: Sequence[dict[str, torch.Tensor]], coefficients: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_i c_i state_i for floating-point entries (buffers and integers come from the first state)."""
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for c, s in zip(coefficients, states):
                acc += float(c) * s[name].to(torch.float64)
            out[name] = acc.to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def profile_key(std: float) -> str:
    """How a profile is named in checkpoints and snapshots: ``0.05``, ``0.1``."""
    return f"{float(std):g}"


def snapshot_steps(total: int, n: int) -> list[int]:
    """The steps at which every profile is snapshotted: n evenly spaced, the last one ``total``."""
    return sorted({max(1, round(total * k / n)) for k in range(1, n + 1)})


def snapshot_path(unit_dir: Path, step: int) -> Path:
    return Path(unit_dir) / "ema" / f"snapshot_{step:09d}.pt"


def save_snapshot(unit_dir: Path, step: int, profiles: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Every profile's weights at ``step``, written atomically (the post-hoc EMA's inputs)."""
    path = snapshot_path(unit_dir, step)
    write_atomic(path, lambda f: torch.save({"step": int(step), "profiles": profiles}, f))
    return path


def reconstruct(unit_dir: Path, std: float, end_step: int) -> dict[str, torch.Tensor]:
    """The weights of profile ``std`` at ``end_step`` from the unit's snapshots (EDM2 post-hoc EMA, App. C.3)."""
    snaps = sorted(Path(unit_dir).glob("ema/snapshot_*.pt"))
    if not snaps:
        raise CheckpointError(f"{unit_dir} has no EMA snapshots to reconstruct eval.ema_std={std} from",
                              hint="sample one of the tracked train.ema_std profiles, or retrain with train.ema_std set")
    states, steps, stds = [], [], []
    for path in snaps:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        for key, state in blob["profiles"].items():
            states.append(state)
            steps.append(int(blob["step"]))
            stds.append(float(key))
    return combine(states, posthoc_coefficients(steps, stds, int(end_step), float(std)))


def pick_profile(ckpt: dict, unit_dir: Path, stds: Sequence[float], want: Optional[float],
                 end_step: int) -> dict[str, torch.Tensor]:
    """The EMA weights to sample: the tracked profile ``want`` (default: the last of ``stds``), else post hoc."""
    std = float(stds[-1]) if want is None else float(want)
    profiles = ckpt["ema_profiles"]
    if profile_key(std) in profiles:
        return profiles[profile_key(std)]
    return reconstruct(unit_dir, std, end_step)
