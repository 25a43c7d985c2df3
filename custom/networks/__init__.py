"""Networks: the cascade denoiser, the CT detail refiners and their blocks."""

from .cascade import CascadeDenoiser, DepthLifting, XRayEncoder
from .detail_refiner import DetailRefiner
from .filters import Laplacian3D, Sobel3D, gradient_magnitude_3d, laplacian_3d, sobel_3d
from .frequency import FrequencyAttention
from .super_resolution import SuperResolutionRefiner
from .upsample import PixelShuffle3D

__all__ = [
    "CascadeDenoiser",
    "DepthLifting",
    "DetailRefiner",
    "FrequencyAttention",
    "Laplacian3D",
    "PixelShuffle3D",
    "Sobel3D",
    "SuperResolutionRefiner",
    "XRayEncoder",
    "gradient_magnitude_3d",
    "laplacian_3d",
    "sobel_3d",
]
