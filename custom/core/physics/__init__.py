"""X-ray physics: HU to attenuation, projection geometry, and a differentiable DRR projector."""

from custom.core.physics.attenuation import MU_WATER_70KEV, hu_to_mu
from custom.core.physics.geometry import ProjectionGeometry, get_geometry, load_presets, view_angle
from custom.core.physics.projector import DRR, DRRProjector, drr_memory_bytes

__all__ = [
    "MU_WATER_70KEV",
    "hu_to_mu",
    "ProjectionGeometry",
    "get_geometry",
    "load_presets",
    "view_angle",
    "DRR",
    "DRRProjector",
    "drr_memory_bytes",
]
