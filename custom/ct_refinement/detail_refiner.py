"""The `detail` refiner of the CT detail refinement: a same-size refiner guided by the two X-rays.

Inputs: the coarse CT (B, 1, D, D, D) in window units and the two X-rays (B, V, N, N) in network-input units
(line integral / 8, :func:`custom.core.xray.line_integral_to_input`), frontal then lateral. Output: the refined CT
(B, 1, D, D, D) = coarse + a learned correction (its head starts at zero: the untrained network returns the
coarse CT).

* High-pass path: the fixed 3D Laplacian of the coarse CT is a second input channel, so structure (the coarse CT)
  and detail (its Laplacian) enter separately.
* X-ray detail guidance: each view has a 2D encoder (:class:`custom.core.networks.lifting.XRayEncoder`); the views'
  features are lifted into 3D along the real X-ray paths by the adjoint of the DRR projector and fused across views by a
  1x1x1 convolution (:class:`custom.core.networks.lifting.DepthLifting`), as in the cascade.
* A 3D U-Net with ``SEResBlock`` stages (instance norm, channel attention), sub-pixel upsampling
  (:class:`PixelShuffle3D`) and :class:`FrequencyAttention` after the bottleneck and after each decoder stage.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from custom.core.networks.blocks import SEResBlock
from custom.core.networks.filters import Laplacian3D
from custom.core.networks.frequency import FrequencyAttention
from custom.core.networks.lifting import DepthLifting, XRayEncoder
from custom.core.networks.upsample import PixelShuffle3D
from custom.core.physics import ProjectionGeometry


class DetailRefiner(nn.Module):
    """Coarse CT + two X-rays -> refined CT of the same size (about 5 M parameters at the defaults).

    Args:
        channels: U-Net channels per level, finest first (D is divided by ``2 ** (len(channels) - 1)``).
        num_blocks: ``SEResBlock`` count per encoder level (the decoder has one per level).
        xray_channels: output channels of each view's 2D encoder.
        lift_channels: channels of the lifted, view-fused X-ray volume.
        frequency_bins: radial bins of the frequency attention.
        residual_scale: factor of the learned correction.
        geometry, views, cube_mm: the X-ray geometry of the depth lifting (as the cascade).
        se_reduction: squeeze ratio of the channel attention.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        num_blocks: Sequence[int] = (1, 1, 2),
        xray_channels: int = 32,
        lift_channels: int = 16,
        frequency_bins: int = 8,
        residual_scale: float = 1.0,
        geometry: str | ProjectionGeometry = "x2ctgan",
        views: Sequence[str] = ("frontal", "lateral"),
        cube_mm: float = 320.0,
        se_reduction: int = 4,
    ):
        super().__init__()
        channels, num_blocks = [int(c) for c in channels], [int(n) for n in num_blocks]
        if len(channels) < 2 or len(num_blocks) != len(channels) or min(num_blocks) < 1:
            raise ValueError(
                f"channels needs at least 2 levels and num_blocks one positive count per level, got {channels} and "
                f"{num_blocks}"
            )
        self.levels = len(channels)
        self.views = tuple(views)
        self.residual_scale = float(residual_scale)
        self.highpass = Laplacian3D()
        self.encoders = nn.ModuleList([XRayEncoder(xray_channels) for _ in self.views])
        self.lift = DepthLifting(xray_channels, lift_channels, geometry, self.views, cube_mm)
        self.stem = nn.Conv3d(2 + lift_channels, channels[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for k, (ch, nb) in enumerate(zip(channels, num_blocks)):
            if k > 0:
                self.down.append(nn.Conv3d(channels[k - 1], ch, 3, stride=2, padding=1))
            self.enc.append(nn.Sequential(*[SEResBlock(3, ch, ch, se_reduction) for _ in range(nb)]))
        self.freq = nn.ModuleList([FrequencyAttention(channels[-1], frequency_bins)])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in range(self.levels - 2, -1, -1):
            self.up.append(PixelShuffle3D(channels[k + 1], channels[k], 2))
            self.dec.append(SEResBlock(3, 2 * channels[k], channels[k], se_reduction))
            self.freq.append(FrequencyAttention(channels[k], frequency_bins))
        self.head = nn.Conv3d(channels[0], 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, coarse: torch.Tensor, xrays: torch.Tensor) -> torch.Tensor:
        d = coarse.shape[-1]
        factor = 2 ** (self.levels - 1)
        if coarse.ndim != 5 or coarse.shape[1] != 1 or coarse.shape[-3:] != (d, d, d) or d % (2 * factor):
            raise ValueError(
                f"coarse must be (B, 1, D, D, D) with D divisible by {2 * factor}, got shape {tuple(coarse.shape)}"
            )
        if xrays.ndim != 4 or xrays.shape[1] != len(self.views) or xrays.shape[-1] != xrays.shape[-2]:
            raise ValueError(
                f"xrays must be (B, {len(self.views)}, N, N) ({', '.join(self.views)}), got "
                f"shape {tuple(xrays.shape)}"
            )
        if xrays.shape[0] != coarse.shape[0]:
            raise ValueError(f"batch sizes differ: coarse {coarse.shape[0]}, xrays {xrays.shape[0]}")
        feats = torch.stack([enc(xrays[:, i : i + 1]) for i, enc in enumerate(self.encoders)], dim=2)
        lifted = self.lift(feats, d // 2)
        lifted = F.interpolate(lifted, size=(d, d, d), mode="trilinear", align_corners=False)
        h = self.stem(torch.cat([coarse, self.highpass(coarse), lifted], dim=1))
        skips = []
        for k, stage in enumerate(self.enc):
            if k > 0:
                h = self.down[k - 1](h)
            h = stage(h)
            skips.append(h)
        h = self.freq[0](h)
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            skip = skips[self.levels - 2 - i]
            h = self.freq[i + 1](dec(torch.cat([up(h), skip], dim=1)))
        return coarse + self.residual_scale * self.head(h)
