"""Closed forms for Gaussian data x1 ~ N(mu, s^2 I): the oracle of the conversion tests."""
from __future__ import annotations

import torch


def linear_posteriors(x: torch.Tensor, t: torch.Tensor, mu: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x1 | x_t] and E[eps | x_t] on the linear path x_t = t x1 + (1 - t) eps."""
    t = t[:, None]
    var = t**2 * s**2 + (1 - t) ** 2
    r = x - t * mu
    return mu + t * s**2 / var * r, (1 - t) / var * r


def linear_velocity(x: torch.Tensor, t: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    x1, eps = linear_posteriors(x, t, mu, s)
    return x1 - eps


def vp_posteriors(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, mu: float, s: float):
    """E[x0 | x_tau] and E[eps | x_tau] on x_tau = alpha x0 + sigma eps."""
    a, g = alpha[:, None], sigma[:, None]
    var = a**2 * s**2 + g**2
    r = x - a * mu
    return mu + a * s**2 / var * r, g / var * r
