"""Diffusion: cosine v-parameterized schedule and a DDIM sampler with optional physics guidance."""

from .ddim import DDIMSampler
from .schedule import add_noise, cosine_alpha_bar, eps_from_x0, normalized_timestep, velocity, x0_from_v

__all__ = [
    "DDIMSampler",
    "add_noise",
    "cosine_alpha_bar",
    "eps_from_x0",
    "normalized_timestep",
    "velocity",
    "x0_from_v",
]
