"""Losses of the cascade beyond MONAI's: gradient difference and X-ray (DRR) consistency of a predicted CT."""

from __future__ import annotations

import torch

from custom.core.physics import DRR, get_geometry
from custom.core.transforms import window_to_hu
from custom.core.xray import line_integral_to_input


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) mean L1 difference of finite-difference gradients along each spatial axis.

    It penalizes blurred edges (bone, vessels) that L1 and SSIM alone tolerate.
    """
    loss = 0.0
    for axis in range(2, pred.ndim):
        diff = (torch.diff(pred, dim=axis) - torch.diff(target, dim=axis)).abs()
        loss = loss + diff.flatten(1).mean(1)
    return loss / (pred.ndim - 2)


class DRRConsistencyLoss(torch.nn.Module):
    """L1 between DRRs of the predicted and the target CT, both rendered from the same windowed volumes.

    Both CTs go window -> HU -> mu -> attenuation line integrals (Beer-Lambert, not a plain sum of voxel values)
    through the same projector, for every view at its own angle (the lateral view is rendered, not a copy of the
    frontal one), so the window clips them alike and the loss compares like with like. Values are in network-input
    units (line integral / 8), with no per-sample normalization: that would make the loss scale-invariant and blind
    to intensity errors.
    """

    def __init__(self, geometry="x2ctgan", views=("frontal", "lateral"), window=(-200.0, 200.0), cube_mm=320.0):
        super().__init__()
        geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
        self.geometry, self.views, self.window, self.cube_mm = geo, tuple(views), tuple(window), float(cube_mm)
        self._drr: dict = {}

    def render(self, x: torch.Tensor, pixels: int | None = None) -> torch.Tensor:
        d = x.shape[-1]
        pixels = pixels or d
        if pixels not in self._drr:
            self._drr[pixels] = DRR(self.geometry.resized(pixels), self.views)
        return line_integral_to_input(self._drr[pixels](window_to_hu(x, self.window), (self.cube_mm / d,) * 3))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample (B,) mean absolute DRR difference."""
        with torch.no_grad():
            ref = self.render(target)
        return (self.render(pred) - ref).abs().flatten(1).mean(1)
