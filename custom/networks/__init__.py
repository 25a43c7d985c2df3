"""Networks: the cascade denoiser and its blocks."""

from .cascade import CascadeDenoiser, DepthLifting, XRayEncoder

__all__ = ["CascadeDenoiser", "DepthLifting", "XRayEncoder"]
