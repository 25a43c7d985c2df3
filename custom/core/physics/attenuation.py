"""Hounsfield units to linear attenuation coefficients.

The DRR physics works on linear attenuation ``mu`` in 1/mm so that a line integral of ``mu`` in mm is the
dimensionless optical depth of Beer-Lambert's law, ``I / I0 = exp(-integral)``.
"""

from __future__ import annotations

import torch

# Linear attenuation of water at an effective energy of about 70 keV (NIST XCOM: 0.193 /cm).
MU_WATER_70KEV = 0.0193


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_70KEV) -> torch.Tensor:
    """Map CT numbers to linear attenuation.

    ``mu = mu_water * max(0, 1 + HU / 1000)``: air (-1000 HU) and anything below it attenuates nothing, water
    (0 HU) attenuates ``mu_water``. The clamp is a ``relu`` so the gradient is defined everywhere.

    Args:
        hu: CT values in Hounsfield units, any shape.
        mu_water: attenuation of water in 1/mm at the effective beam energy.

    Returns:
        ``mu`` in 1/mm, same shape and dtype as ``hu``.
    """
    if mu_water <= 0:
        raise ValueError(f"mu_water must be positive (1/mm), got {mu_water}")
    return mu_water * torch.relu(1.0 + hu / 1000.0)
