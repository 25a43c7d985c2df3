"""Learned 3D upsampling by sub-pixel convolution (PixelShuffle3D)."""

from __future__ import annotations

import torch
from monai.networks.blocks import SubpixelUpsample


class PixelShuffle3D(SubpixelUpsample):
    """Sub-pixel convolution in 3D: a 3x3x3 convolution to ``out_channels * r^3`` channels, then a voxel shuffle.

    (B, in_channels, D, H, W) -> (B, out_channels, r D, r H, r W). Output channel ``c`` at sub-voxel offset
    ``(i, j, k)`` comes from convolution channel ``c * r^3 + i * r^2 + j * r + k``
    (``monai.networks.utils.pixelshuffle``). The convolution is ICNR-initialised (Aitken et al. 2017): the r^3
    sub-kernels (and biases) of each output channel start identical, so the untrained layer is a convolution followed by
    nearest-neighbour upsampling and has no checkerboard pattern. MONAI's ``SubpixelUpsample`` does all of this;
    the class fixes the dimension to 3 and turns MONAI's blurring pad-and-pool off by default, because the
    refiners use the upsampling to add detail, not to smooth.

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``).
        scale_factor: r, the upsampling factor per axis.
        apply_pad_pool: average each output over an r^3 neighbourhood (extra anti-checkerboard smoothing).
        bias: bias of the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale_factor: int = 2,
        apply_pad_pool: bool = False,
        bias: bool = True,
    ):
        if int(scale_factor) < 1:
            raise ValueError(f"scale_factor must be a positive integer, got {scale_factor}")
        super().__init__(3, in_channels, out_channels, int(scale_factor), "default", apply_pad_pool, bias)
        conv = self.conv_block
        if conv.bias is not None:
            # MONAI's icnr_init ties the weights only; a random bias per sub-voxel offset would still leave an
            # r^3-periodic pattern in the untrained output, so the bias is tied (to zero) as well.
            torch.nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"PixelShuffle3D expects (B, C, D, H, W), got shape {tuple(x.shape)}")
        return super().forward(x)
