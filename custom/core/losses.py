"""Losses shared by the bundles' trainers.

:class:`SeparableSSIMLoss` is MONAI's ``SSIMLoss(spatial_dims=3)`` (Gaussian window, valid convolution, constants
``K1``/``K2``, SSIM averaged over channels and voxels per batch item) computed with the Gaussian window applied
along one axis at a time. MONAI convolves with the full ``win^3`` kernel: 343 multiply-adds per voxel and moment for
a 7^3 window, against 21 here. On crops of 64^3 that made the SSIM term of the CT refiners' loss cost more than the
network it trains (forward and backward on a CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from custom.core.networks.filters import valid_separable_filter


class SeparableSSIMLoss(nn.Module):
    """``1 - SSIM`` of (B, C, D, H, W) volumes, per batch item, with a separable Gaussian window.

    Args:
        data_range: value range of the data (the SSIM constants are ``(K1 * data_range)^2``, ``(K2 * data_range)^2``).
        win_size: side of the Gaussian window (odd, at most the smallest spatial side).
        kernel_sigma: standard deviation of the window, in voxels.
        k1, k2: the SSIM stability constants.
        reduction: ``"mean"`` (a scalar, the batch mean) or ``"none"`` ((B, 1), as MONAI's ``SSIMLoss``).
    """

    def __init__(
        self,
        data_range: float = 1.0,
        win_size: int = 7,
        kernel_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
    ):
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        win = int(win_size)
        dist = torch.arange(win, dtype=torch.float32) - (win - 1) / 2
        gauss = torch.exp(-((dist / float(kernel_sigma)) ** 2) / 2)
        self.register_buffer("window", gauss / gauss.sum(), persistent=False)
        self.c1 = (float(k1) * float(data_range)) ** 2
        self.c2 = (float(k2) * float(data_range)) ** 2
        self.reduction = reduction

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return valid_separable_filter(x, self.window.to(x.dtype))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.ndim != 5 or input.shape != target.shape:
            raise ValueError(f"expected two (B, C, D, H, W) tensors of one shape, got {input.shape}, {target.shape}")
        b, c = input.shape[:2]
        x = input.float().reshape(b * c, 1, *input.shape[2:])
        y = target.float().reshape(b * c, 1, *target.shape[2:])
        mu_x, mu_y, mu_xx, mu_yy, mu_xy = self._blur(torch.cat([x, y, x * x, y * y, x * y])).chunk(5)
        var_x, var_y, cov = mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y
        contrast = (2 * cov + self.c2) / (var_x + var_y + self.c2)
        ssim = (2 * mu_x * mu_y + self.c1) / (mu_x**2 + mu_y**2 + self.c1) * contrast
        loss = 1 - ssim.reshape(b, -1).mean(dim=1, keepdim=True)
        return loss.mean() if self.reduction == "mean" else loss
