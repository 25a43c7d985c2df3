"""Sub-volumes for training the cascade's super-resolution stages: a random cube of the CT and of the previous stage's
output, with the physical coordinates of its voxels, so the network knows where in the chest the crop lies."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from custom.xray2ct.patch_network import cube_coordinates


class RandCubeCropd(Randomizable, MapTransform):
    """Crop the same random ``crop``^3 cube out of every (C, D, D, D) volume of ``keys`` and store the normalized
    coordinates of its voxels (3, c, c, c) under ``coords_key``.

    ``crop`` at least D keeps the whole volume (whole-volume training, for those with the memory). MONAI's
    ``RandSpatialCropd`` crops alike but does not say where; the coordinates are what make a crop mean the same as
    the same voxels of the whole volume (see :mod:`custom.xray2ct.patch_network`).
    """

    def __init__(self, keys: KeysCollection, crop: int, coords_key: str = "coords", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.crop, self.coords_key = int(crop), coords_key
        self._origin = (0, 0, 0)

    def randomize(self, size: int) -> None:
        c = min(self.crop, size)
        self._origin = tuple(int(o) for o in self.R.randint(0, size - c + 1, size=3))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        sizes = {tuple(d[k].shape[-3:]) for k in self.key_iterator(d)}
        if len(sizes) != 1 or len(set(next(iter(sizes)))) != 1:
            raise ValueError(f"RandCubeCropd needs cubes of one size under {list(self.keys)}, got {sizes}")
        size = next(iter(sizes))[0]
        self.randomize(size)
        c = min(self.crop, size)
        i, j, k = self._origin
        for key in self.key_iterator(d):
            d[key] = d[key][..., i : i + c, j : j + c, k : k + c]
        d[self.coords_key] = cube_coordinates(size, self._origin, c)
        return d


class LoadPreviousStaged(MapTransform):
    """The previous stage's real sampled output as ``prev``: ``prev_dir/<case_id>/ct.nii.gz`` (HU, as this bundle's
    inference writes it), windowed and upsampled trilinearly to ``size``^3.

    Validation and every reported figure of stages 2 and 3 use this, not the ground truth degraded to look like it:
    a stage is judged on the input it will really get.
    """

    def __init__(self, prev_dir: str, size: int, window=(-200.0, 200.0), key: str = "prev", case_key: str = "case_id"):
        super().__init__([case_key])
        self.prev_dir, self.size, self.window, self.key = str(prev_dir), int(size), tuple(window), key

    def __call__(self, data: dict) -> dict:
        import nibabel as nib
        import torch.nn.functional as F

        from custom.core.errors import InputError
        from custom.core.transforms import hu_to_window

        d = dict(data)
        path = f"{self.prev_dir}/{d[self.keys[0]]}/ct.nii.gz"
        try:
            hu = torch.as_tensor(np.asarray(nib.load(path).dataobj, dtype=np.float32))
        except FileNotFoundError:
            raise InputError(
                f"{path}: no output of the previous stage for this case; write them with the bundle's inference.json "
                "(--dataset_dir <prepared data> --data_list_key validation --output_dir <prev_dir>), or set prev_dir "
                "empty to validate on the degraded ground truth (teacher-forced)"
            ) from None
        x = hu_to_window(hu, self.window)[None, None]
        d[self.key] = F.interpolate(x, size=(self.size,) * 3, mode="trilinear", align_corners=False)[0]
        return d
