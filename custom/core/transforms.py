"""CT geometry and intensity transforms, built from MONAI transforms.

Geometry (:func:`ct_geometry_transform`): canonical RAS orientation, isotropic resampling, crop/pad to a physical
cube (320 mm by default, as X2CT-GAN) and resize to ``size`` voxels per side.

Intensity: the HU window of the cascade ([-200, 200] HU, a soft-tissue window: the full [-1000, 3000] range would
squeeze soft tissue into a sliver of [-1, 1]). ``[lo, hi]`` HU is clipped and mapped linearly to [-1, 1];
:func:`window_to_hu` is its exact inverse on the window. Both exist as MONAI transforms (for configs) and as plain
differentiable torch functions (for losses and metrics). The window is deliberately one value passed everywhere;
nothing here hard-codes [-200, 200].
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.transforms import (
    Compose,
    Lambda,
    Orientation,
    Resize,
    ResizeWithPadOrCrop,
    Spacing,
)

from custom.core.ct import HU_MIN

DEFAULT_WINDOW = (-200.0, 200.0)


def _window(window: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ValueError(f"the HU window needs lo < hi, got {window}")
    return lo, hi


def hu_to_window(hu: torch.Tensor, window: Sequence[float] = DEFAULT_WINDOW) -> torch.Tensor:
    """Clip HU to ``window`` and map it linearly to [-1, 1]."""
    lo, hi = _window(window)
    # the outer clamp keeps rounding (float16: hi itself may round up) from leaving [-1, 1]
    return ((hu.clamp(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1.0, 1.0)


def window_to_hu(x: torch.Tensor, window: Sequence[float] = DEFAULT_WINDOW, clip: bool = True) -> torch.Tensor:
    """Inverse of :func:`hu_to_window`: [-1, 1] back to HU on the window (clipped to it unless ``clip=False``)."""
    lo, hi = _window(window)
    if clip:
        x = x.clamp(-1.0, 1.0)
    return (x + 1.0) * ((hi - lo) / 2.0) + lo


def ct_geometry_transform(size: int = 128, cube_mm: float = 320.0, iso_spacing: float = 1.0) -> Compose:
    """RAS orientation, ``iso_spacing`` mm resampling, crop/pad to a ``cube_mm`` cube, resize to ``size``^3.

    Works on a (1, X, Y, Z) MetaTensor in HU. Everything outside the scanned field is air: resampling and padding
    run on ``HU + 1024`` so their zero fill is -1024 HU, not water. Downsizing is anti-aliased (area average).
    """
    if int(size) < 2:
        raise ValueError(f"size must be at least 2 voxels, got {size}")
    n_iso = max(int(round(cube_mm / iso_spacing)), int(size))
    return Compose(
        [
            Orientation(axcodes="RAS", labels=None),
            Lambda(lambda x: x - HU_MIN),
            Spacing(pixdim=(iso_spacing,) * 3, mode="bilinear", padding_mode="zeros"),
            ResizeWithPadOrCrop(spatial_size=(n_iso,) * 3, mode="constant"),
            # "area" (box average) anti-aliases without padding; Resize's Gaussian anti-aliasing pads with zeros,
            # which pulled the outer voxel shell of a CT larger than the cube towards air.
            Resize(spatial_size=(int(size),) * 3, mode="area" if int(size) < n_iso else "trilinear"),
            Lambda(lambda x: x + HU_MIN),
        ]
    )


def cube_affine(size: int, cube_mm: float = 320.0):
    """RAS affine of a ``size``^3 grid over a ``cube_mm`` cube centred on the origin (the DRR isocentre)."""
    import numpy as np

    sp = cube_mm / size
    affine = np.diag([sp, sp, sp, 1.0])
    affine[:3, 3] = -(size - 1) / 2 * sp
    return affine


def finer_affine(affine, in_shape: Sequence[int], out_shape: Sequence[int]):
    """Affine of a volume that covers the same field of view as ``affine``'s grid, with whole ``out / in`` times
    more voxels per axis: the spacing is divided by the factor and the first voxel centre moves half an output
    voxel inside the input's first voxel (a super-resolution output overlays its input). ``in_shape`` and
    ``out_shape`` are the three spatial sizes."""
    import numpy as np

    factors = [int(o) / int(i) for o, i in zip(out_shape, in_shape)]
    if len(factors) != 3 or any(f < 1 or f != int(f) for f in factors):
        raise ValueError(f"{tuple(out_shape)} is not a whole-number upsampling of {tuple(in_shape)}")
    scale = np.diag([1 / f for f in factors] + [1.0])
    scale[:3, 3] = [(1 / f - 1) / 2 for f in factors]
    return np.asarray(affine, dtype=np.float64) @ scale


def preprocess_ct(ct, size: int = 128, cube_mm: float = 320.0, iso_spacing: float = 1.0):
    """Apply :func:`ct_geometry_transform` to a loaded CT; returns a (1, size, size, size) MetaTensor in HU."""
    if _already_on_grid(ct, size, cube_mm):
        return ct.clamp(min=HU_MIN)  # e.g. phantoms: resampling would only blur them
    out = ct_geometry_transform(size, cube_mm, iso_spacing)(ct)
    return out.clamp(min=HU_MIN)


def _already_on_grid(ct, size: int, cube_mm: float) -> bool:
    import nibabel as nib
    import numpy as np

    affine = np.asarray(getattr(ct, "affine", np.eye(4)), dtype=np.float64)
    return (
        tuple(ct.shape[1:]) == (int(size),) * 3
        and nib.aff2axcodes(affine) == ("R", "A", "S")
        and np.allclose(affine[:3, :3], np.diag([cube_mm / size] * 3), atol=1e-4)
    )
