"""Fixed (not learned) 3D derivative operators: Laplacian and Sobel, for high-pass paths, losses and metrics.

Inputs are (B, C, D, H, W) tensors; outputs keep the spatial size. Borders are replicated before filtering, so a
constant volume has exactly zero Laplacian and zero gradient everywhere, borders included (zero padding would
turn the volume's edge into a spurious step). Both are built on MONAI's ``separable_filtering``: the 7-point
Laplacian is the sum of three separable second differences, and each Sobel component is a central difference
along one axis smoothed by [1, 2, 1] along the other two. MONAI's ``LaplaceFilter`` pads with zeros, hence these.
"""

from __future__ import annotations

import torch
from monai.networks.layers import separable_filtering
from torch import nn

_DIFF2 = (1.0, -2.0, 1.0)
_DIFF1 = (-0.5, 0.0, 0.5)  # central difference: a unit ramp has gradient 1
_SMOOTH = (0.25, 0.5, 0.25)  # normalized [1, 2, 1]: smoothing leaves a ramp's slope unchanged
_IDENTITY = (1.0,)


def _check(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")


def _filter(x: torch.Tensor, kernels) -> torch.Tensor:
    ks = [torch.tensor(k, dtype=torch.float32, device=x.device) for k in kernels]
    return separable_filtering(x.float(), ks, mode="replicate")


def laplacian_3d(x: torch.Tensor) -> torch.Tensor:
    """7-point discrete Laplacian of (B, C, D, H, W) ``x``, same shape (units of ``x`` per voxel^2)."""
    _check(x)
    out = 0
    for axis in range(3):
        kernels = [_DIFF2 if a == axis else _IDENTITY for a in range(3)]
        out = out + _filter(x, kernels)
    return out


def sobel_3d(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient of (B, C, D, H, W) ``x``: (B, 3, C, D, H, W), one component per axis, per voxel."""
    _check(x)
    comps = []
    for axis in range(3):
        kernels = [_DIFF1 if a == axis else _SMOOTH for a in range(3)]
        comps.append(_filter(x, kernels))
    return torch.stack(comps, dim=1)


def gradient_magnitude_3d(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Sobel gradient magnitude of (B, C, D, H, W) ``x``, same shape. ``eps`` keeps its gradient finite at 0."""
    return (sobel_3d(x).pow(2).sum(dim=1) + eps).sqrt()


class Laplacian3D(nn.Module):
    """:func:`laplacian_3d` as a parameter-free module (the high-pass path of :class:`DetailRefiner`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return laplacian_3d(x).to(x.dtype)


class Sobel3D(nn.Module):
    """:func:`sobel_3d` as a parameter-free module: (B, C, D, H, W) -> (B, 3, C, D, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sobel_3d(x).to(x.dtype)
