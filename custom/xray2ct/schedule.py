"""Noise schedule and v-parameterization (Salimans & Ho 2022), each formula named.

Notation: ``a_t`` is alpha-bar at integer timestep ``t`` in ``0 .. T-1`` (T = ``num_train_timesteps``), data ``x0``,
noise ``eps``, noisy sample ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``.

Why not MONAI's ``DDIMScheduler``: its cosine schedule divides by alpha-bar at time 0 before clipping the betas, so
timestep 0 is noise-free (a wasted timestep: here it already holds a little noise), and its ``step()`` walks a
fixed stride while its ``set_timesteps`` spaces timesteps with linspace, landing on timesteps the model was not
asked about. The
formulas here are few and explicit, so they are written out.
"""

from __future__ import annotations

import math

import torch


def cosine_alpha_bar(
    num_train_timesteps: int = 1000, s: float = 0.008, min_alpha_bar: float = 1e-5, max_alpha_bar: float = 0.9999
) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021) without renormalization to alpha-bar(0) = 1.

    ``a_t = cos^2( ((t + 1) / T + s) / (1 + s) * pi / 2 )`` for ``t = 0 .. T-1``, clipped to
    [``min_alpha_bar``, ``max_alpha_bar``]: step 0 already carries a little noise, step T-1 is almost pure noise.
    Returns float64 (T,).
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    t = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    a = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return a.clamp(min_alpha_bar, max_alpha_bar)


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Forward process: ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; ``a_t`` has one value per batch item."""
    a = _expand(a_t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def velocity(x0: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """v target: ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``."""
    a = _expand(a_t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Recovery of data from v: ``x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v``."""
    a = _expand(a_t, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Recovery of noise: ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (another sign or order diverges in DDIM)."""
    a = _expand(a_t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def normalized_timestep(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The network's time input, ``t / T`` in [0, 1): the one function training and sampling both use.

    Sharing it keeps the time embedding on the same input range in both (raw ``t`` at sampling would be out of
    the range it was trained on).
    """
    return t.float() / float(num_train_timesteps)
