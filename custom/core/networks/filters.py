"""Fixed (not learned) 3D derivative operators: Laplacian and Sobel, for high-pass paths, losses and metrics.

Inputs are (B, C, D, H, W) tensors; outputs keep the spatial size. Borders are replicated before filtering, so a
constant volume has exactly zero Laplacian and zero gradient everywhere, borders included (zero padding would
turn the volume's edge into a spurious step). Both are separable: the 7-point Laplacian is the sum of three
second differences, and each Sobel component is a central difference along one axis smoothed by [1, 2, 1] along
the other two. MONAI's ``LaplaceFilter`` pads with zeros, hence these; and the 1D passes are weighted sums of
shifted views rather than MONAI's ``separable_filtering``, whose one-channel 3D convolutions with (k, 1, 1) kernels
give the same numbers more than ten times slower on a CPU (Sobel of 4 x 64^3, forward and backward, one thread:
3.0 s against 0.26 s).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_DIFF2 = (1.0, -2.0, 1.0)
_DIFF1 = (-0.5, 0.0, 0.5)  # central difference: a unit ramp has gradient 1
_SMOOTH = (0.25, 0.5, 0.25)  # normalized [1, 2, 1]: smoothing leaves a ramp's slope unchanged
_IDENTITY = (1.0,)


def _check(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")


def _correlate_valid(x: torch.Tensor, kernel: Sequence[float], dim: int) -> torch.Tensor:
    """``out[j] = sum_i kernel[i] x[j + i]`` along ``dim`` (PyTorch's convolution convention, no padding): the
    result is ``len(kernel) - 1`` voxels shorter there."""
    n = x.shape[dim] - len(kernel) + 1
    if n < 1:
        raise ValueError(
            f"a {len(kernel)}-tap filter needs at least {len(kernel)} voxels along dim {dim}, got {x.shape}"
        )
    out = None
    for i, w in enumerate(kernel):
        w = float(w)
        if w:
            term = x.narrow(dim, i, n) * w
            out = term if out is None else out + term
    return out if out is not None else x.narrow(dim, 0, n) * 0.0


def valid_separable_filter(x: torch.Tensor, kernel: Sequence[float]) -> torch.Tensor:
    """The 1D ``kernel`` applied along each spatial axis of (B, C, D, H, W) ``x`` without padding (each side
    shrinks by ``len(kernel) - 1``), e.g. the Gaussian window of SSIM."""
    _check(x)
    for dim in (2, 3, 4):
        x = _correlate_valid(x, kernel, dim)
    return x


def _filter(x: torch.Tensor, kernels) -> torch.Tensor:
    """One 1D kernel per spatial axis (odd lengths), borders replicated: the output keeps the input's size."""
    x = x.float()
    for dim, k in zip((2, 3, 4), kernels):
        if len(k) == 1:
            x = x * float(k[0])
            continue
        half = (len(k) - 1) // 2
        pad = [0] * 6
        pad[2 * (4 - dim)], pad[2 * (4 - dim) + 1] = half, half  # F.pad lists the last dimension first
        x = _correlate_valid(F.pad(x, pad, mode="replicate"), k, dim)
    return x


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
