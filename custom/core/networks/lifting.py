"""Two X-rays into a 3D feature volume: a per-view 2D encoder and lifting along the real (diverging) X-ray paths.

Shared by every network that is conditioned on the radiographs (the cascade's denoisers and the CT detail refiner):
features are spread back along each ray with the adjoint of the DRR projector of the same geometry and averaged,
rather than repeated along an axis, which would ignore the cone-beam magnification.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from custom.core.networks.blocks import FiLMResBlock
from custom.core.physics import DRRProjector, ProjectionGeometry, get_geometry


class XRayEncoder(nn.Module):
    """2D CNN: (B, 1, N, N) -> (B, channels, N/2, N/2)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        half = max(channels // 2, 8)
        self.stem = nn.Conv2d(1, half, 3, padding=1)
        self.block1 = FiLMResBlock(2, half, half)
        self.down = nn.Conv2d(half, channels, 3, stride=2, padding=1)
        self.block2 = FiLMResBlock(2, channels, channels)
        self.block3 = FiLMResBlock(2, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(self.stem(x))
        return self.block3(self.block2(self.down(h)))


class DepthLifting(nn.Module):
    """Lift per-view 2D features into a (grid)^3 volume along the X-ray paths, fuse the views.

    Args:
        in_channels: feature channels per view.
        out_channels: channels of the fused volume (16 by default: one channel would discard most of the lifted
            X-ray information).
        geometry: the projection geometry of the X-rays (a preset name or a :class:`ProjectionGeometry`).
        views: the views, in the order of the X-ray channels.
        cube_mm: side of the CT cube in mm (the lifted grid spans it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 16,
        geometry: str | ProjectionGeometry = "x2ctgan",
        views: Sequence[str] = ("frontal", "lateral"),
        cube_mm: float = 320.0,
    ):
        super().__init__()
        self.geometry = get_geometry(geometry) if isinstance(geometry, str) else geometry
        self.views = tuple(views)
        self.cube_mm = float(cube_mm)
        self.fuse = nn.Conv3d(in_channels * len(self.views), out_channels, 1)
        self._projectors: dict = {}
        self._weights: dict = {}

    def _projector(self, pixels: int) -> DRRProjector:
        if pixels not in self._projectors:
            self._projectors[pixels] = DRRProjector(self.geometry.resized(pixels), self.views)
        return self._projectors[pixels]

    @torch.no_grad()
    def _ray_weight(self, proj, n_views: int, u: int, grid: int, device) -> torch.Tensor:
        """Sum of ray weights per voxel (constant): turns the backprojected sum into an average along rays."""
        key = (u, grid, str(device))
        if key not in self._weights:
            ones = torch.ones(1, n_views, u, u, device=device)
            shape, spacing = (grid,) * 3, (self.cube_mm / grid,) * 3
            self._weights[key] = proj.backproject(ones, shape, spacing).clamp(min=1e-6)
        return self._weights[key]

    def forward(self, feats: torch.Tensor, grid: int) -> torch.Tensor:
        """``feats`` (B, C, n_views, U, U) -> (B, out_channels, grid, grid, grid)."""
        b, c, n_views, u, _ = feats.shape
        proj = self._projector(u)
        shape, spacing = (grid,) * 3, (self.cube_mm / grid,) * 3
        lifted = proj.backproject(feats.reshape(b * c, n_views, u, u), shape, spacing)
        weight = self._ray_weight(proj, n_views, u, grid, feats.device)
        lifted = (lifted / weight).to(feats.dtype).reshape(b, c * n_views, grid, grid, grid)
        return self.fuse(lifted)
