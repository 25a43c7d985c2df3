"""Aligned sub-volume pairs for training the super-resolution refiner on crops.

The refiner maps a coarse CT of side D to a CT of side rD over the same cube: coarse voxel ``i`` covers fine voxels
``r*i .. r*i + r - 1`` along each axis (both grids are :func:`custom.core.transforms.cube_affine` grids of the
same ``cube_mm`` cube). A crop of ``c`` coarse voxels at origin ``o`` therefore pairs with the crop of ``r*c`` fine
voxels at origin ``r*o``, exactly; its multi-scale targets (the fine crop averaged down by 2, 4, ...) are then the
crops of the ground truth averaged down on the global 2D, 4D, ... grids, since ``r*o`` is a multiple of every
factor.
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable


def paired_crop_slices(origin, size: int, scale: int):
    """(coarse slices, fine slices) of the crop of ``size`` coarse voxels at coarse ``origin`` (three ints)."""
    coarse = tuple(slice(int(o), int(o) + size) for o in origin)
    fine = tuple(slice(scale * int(o), scale * (int(o) + size)) for o in origin)
    return coarse, fine


class PairedRandCropd(Randomizable, MapTransform):
    """Random aligned crops of the coarse input (``image_key``) and the ground truth (``label_key``).

    Args:
        keys: ``[image_key, label_key]``: the coarse CT (C, D, D, D) and the ground truth (C', rD, rD, rD).
        scale: r, the refiner's scale factor.
        crop_size: side of the coarse crop in coarse voxels (the fine crop is ``scale`` times larger); 0, or a size
            at least D, keeps the whole volume.
        num_samples: crops per volume; the transform returns a list of that many dicts (MONAI's collate flattens
            it into the batch), every other key copied as it is.
        max_tries: draws per crop before a flat one (the ground truth crop spans less than ``min_range`` window
            units: air, or lungs clipped by the window) is accepted anyway.
        min_range: the flatness threshold, window units.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        scale: int = 4,
        crop_size: int = 16,
        num_samples: int = 1,
        max_tries: int = 10,
        min_range: float = 0.05,
    ):
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"PairedRandCropd crops [coarse key, ground-truth key], got {self.keys}")
        self.scale, self.crop_size = int(scale), int(crop_size or 0)
        self.num_samples, self.max_tries, self.min_range = max(1, int(num_samples)), max(1, int(max_tries)), min_range
        if self.scale < 1 or self.crop_size < 0:
            raise ValueError(f"scale must be >= 1 and crop_size >= 0, got {scale} and {crop_size}")

    def randomize(self, data=None) -> None:  # origins are drawn per crop in __call__
        pass

    def _draw(self, side: int, size: int):
        return [int(self.R.randint(0, side - size + 1)) for _ in range(3)]

    def __call__(self, data: dict) -> list[dict]:
        image_key, label_key = self.keys
        image, label = data[image_key], data[label_key]
        side = int(image.shape[-1])
        if image.ndim != 4 or len(set(image.shape[1:])) != 1:
            raise ValueError(f"{image_key} must be a (C, D, D, D) cube, got {tuple(image.shape)}")
        if tuple(label.shape[1:]) != (self.scale * side,) * 3:
            raise ValueError(
                f"{label_key} {tuple(label.shape)} is not {self.scale} times {image_key} {tuple(image.shape)}: the "
                "ground truth must be prepared at volume_size and the coarse input at volume_size // scale_factor"
            )
        size = side if not self.crop_size or self.crop_size >= side else self.crop_size
        out = []
        for _ in range(self.num_samples):
            for _ in range(self.max_tries):
                origin = self._draw(side, size)
                cs, fs = paired_crop_slices(origin, size, self.scale)
                crop = label[(slice(None), *fs)]
                if size == side or float(crop.max() - crop.min()) >= self.min_range:
                    break
            d = dict(data)
            d[image_key] = image[(slice(None), *cs)]
            d[label_key] = crop
            d["crop_origin"] = torch.as_tensor(origin, dtype=torch.int64)
            out.append(d)
        return out
