"""Reading radiographs (DICOM CR/DX, PNG, NIfTI) and putting them on a DRR detector grid.

Array convention (MONAI's for 2D images, and the DRR projector's): a (1, U, V) MetaTensor where ``u`` is the display
column (left to right) and ``v`` the display row (top to bottom); pixel spacing in mm is in the affine when known.
Values grow with attenuation (bone bright), as DRR line integrals do: MONOCHROME1 DICOM is inverted on reading.

Synthetic DRRs are line integrals (optical depth) and go into networks through the fixed map
:func:`line_integral_to_input`. A clinical radiograph carries unknown vendor processing (log transform, contrast
equalisation), so its values cannot be turned back into line integrals exactly; :func:`match_drr_range` maps its
robust range (1st..99th percentile inside the field) onto the reference range of the DRRs the model was trained on.
That is the one place where a per-image normalization is applied, and only to real radiographs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from custom.core.errors import InputError
from custom.core.options import as_bool, need_file
from custom.core.physics.geometry import ProjectionGeometry

# Line integrals of chest DRRs span about 0..8 (soft tissue ~0.02/mm over 200-300 mm, plus bone).
LINE_INTEGRAL_SCALE = 8.0
MAX_PIXELS = 2**28  # 16k x 16k
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "RF", "XA", "MG", "PX", "OT")


def line_integral_to_input(p: torch.Tensor) -> torch.Tensor:
    """Fixed map from DRR line integrals to network inputs, ``p / 8``: the same for data and physics losses."""
    return p / LINE_INTEGRAL_SCALE


def _meta_tensor(arr: np.ndarray, spacing, path: Path, extra: dict) -> MetaTensor:
    if arr.ndim != 2:
        raise InputError(f"{path}: an X-ray must be a 2D image, got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"{path}: image of {arr.shape[0]}x{arr.shape[1]} px is too small to be an X-ray")
    if arr.size > MAX_PIXELS:
        raise InputError(f"{path}: {arr.shape[0]}x{arr.shape[1]} px is larger than the {MAX_PIXELS:.3g} accepted")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: the image holds NaN or infinite pixels")
    su, sv = (float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    affine = np.diag([su, sv, 1.0, 1.0])
    affine[0, 3] = -(arr.shape[0] - 1) / 2 * su
    affine[1, 3] = -(arr.shape[1] - 1) / 2 * sv
    meta = {"filename_or_obj": str(path), "spacing_known": spacing is not None, **extra}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None], affine=affine, meta=meta)


def _read_dicom(path: Path) -> MetaTensor:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable DICOM file ({e})") from None
    modality = str(getattr(ds, "Modality", ""))
    if modality in ("CT", "MR", "PT", "NM", "US"):
        raise InputError(f"{path}: modality {modality} is not a radiograph (expected CR or DX)")
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if rows * cols == 0:
        raise InputError(f"{path}: the DICOM header has no image size")
    if rows * cols * frames > MAX_PIXELS:
        raise InputError(f"{path}: the header claims {rows}x{cols}x{frames} pixels, more than accepted")
    if frames > 1:
        raise InputError(f"{path}: a multi-frame DICOM ({frames} frames); give a single radiograph")
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array.astype(np.float32)
    except Exception as e:
        raise InputError(
            f"{path}: the pixel data cannot be decoded ({e}); the file is corrupt or its " "compression is unsupported"
        ) from None
    if arr.ndim == 3:
        raise InputError(f"{path}: a colour image ({arr.shape}); radiographs are greyscale")
    arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr  # MONOCHROME1: high values are dark; make dense tissue bright
    spacing = None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if getattr(ds, tag, None) is not None:
            row_sp, col_sp = (float(v) for v in getattr(ds, tag))
            spacing = (col_sp, row_sp)  # (u: along a row = column spacing, v: between rows)
            break
    return _meta_tensor(arr.T, spacing, path, {"modality": modality, "spacing_tag": tag if spacing else None})


def _read_png(path: Path) -> MetaTensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                if np.abs(rgb[..., 0] - rgb[..., 1]).max() > 2 or np.abs(rgb[..., 1] - rgb[..., 2]).max() > 2:
                    raise InputError(f"{path}: a colour image; radiographs are greyscale")
                arr = rgb[..., 0]
            else:
                arr = np.asarray(im, dtype=np.float32)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    return _meta_tensor(arr.T, None, path, {})


def _read_nifti(path: Path) -> MetaTensor:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(s for s in img.shape if s != 1) if len(img.shape) > 2 else img.shape
        if len(shape) != 2:
            raise InputError(f"{path}: an X-ray must be a 2D image, got shape {img.shape}")
        if int(np.prod(shape)) > MAX_PIXELS:
            raise InputError(f"{path}: the header claims {shape} pixels, more than accepted")
        arr = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: not a readable NIfTI file ({e})") from None
    zooms = img.header.get_zooms()[:2]
    return _meta_tensor(arr, zooms, path, {})


def load_xray(path) -> MetaTensor:
    """Load a radiograph from DICOM (.dcm), PNG/JPEG/TIFF or NIfTI as a (1, U, V) MetaTensor (bone bright)."""
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
        return _read_png(path)
    return _read_dicom(path)


def to_detector(xray: MetaTensor, geometry: ProjectionGeometry) -> torch.Tensor:
    """Resample a radiograph onto the detector grid of ``geometry`` (U = V = detector_pixels).

    With known pixel spacing the image is centre-cropped or padded to the detector's physical extent first; without
    it, the whole image is taken as the detector. Returns (1, N, N) float32.
    """
    from monai.transforms import Resize, ResizeWithPadOrCrop

    img = torch.as_tensor(xray).float()
    if img.ndim == 2:
        img = img[None]
    if xray.meta.get("spacing_known", False) if isinstance(xray, MetaTensor) else False:
        sp = [float(s) for s in xray.pixdim[:2]]
        extent = geometry.detector_extent
        side = [max(1, int(round(extent / s))) for s in sp]
        bg = float(img.min())
        img = ResizeWithPadOrCrop(side, mode="constant")(img - bg) + bg  # zero fill of img - bg: background
    n = geometry.detector_pixels
    return torch.as_tensor(Resize((n, n), mode="area" if img.shape[-1] > n else "bilinear")(img)).float()


def match_drr_range(img: torch.Tensor, reference=(0.05, 0.75), field_threshold: float | None = None) -> torch.Tensor:
    """Map a clinical radiograph's 1st..99th percentile onto the network-input range of DRRs.

    ``reference`` is that range for the training DRRs after :func:`line_integral_to_input`.
    """
    x = torch.as_tensor(img).float()
    vals = x[x > field_threshold] if field_threshold is not None else x.reshape(-1)
    if vals.numel() < 16:
        raise InputError("the radiograph has no usable pixels (empty or constant image)")
    lo, hi = torch.quantile(vals[:: max(1, vals.numel() // 1_000_000)], torch.tensor([0.01, 0.99]))
    if float(hi - lo) <= 0:
        raise InputError("the radiograph is constant; nothing to reconstruct from")
    return (x - lo) / (hi - lo) * (reference[1] - reference[0]) + reference[0]


def detector_affine(geometry: ProjectionGeometry) -> np.ndarray:
    """Affine of a detector image: pixel pitch in mm, origin such that the detector centre is (0, 0)."""
    n, s = geometry.detector_pixels, geometry.detector_spacing
    affine = np.diag([s, s, 1.0, 1.0])
    affine[:2, 3] = -(n - 1) / 2 * s
    return affine


def save_xray(img: torch.Tensor, geometry: ProjectionGeometry, path, description: str = "DRR line integral") -> None:
    """Write a (U, V) detector image as 2D NIfTI (``[u, v]`` = column, row; spacing in mm), atomically."""
    from custom.core.io import save_nifti

    arr = np.asarray(torch.as_tensor(img).detach().cpu().float()).squeeze()
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D detector image, got shape {arr.shape}")
    save_nifti(arr, detector_affine(geometry), path, description=description)


def _body_width(img: torch.Tensor) -> int:
    """Detector columns crossed by the body: where the column's strongest attenuation exceeds 10% of the image's."""
    profile = torch.as_tensor(img).float().reshape(img.shape[-2:]).amax(dim=1)  # [u, v]: one value per column u
    return int((profile > 0.1 * profile.max()).sum())


def check_view_pair(frontal: torch.Tensor, lateral: torch.Tensor, line_integrals: bool = True) -> None:
    """Raise :class:`InputError` when two X-rays cannot be a frontal and a lateral view of the same chest.

    Swapped views: a chest is wider (left-right) than it is deep (front-back), so the body spans more detector
    columns in the frontal image; on the project's phantoms the ratio is 1.04-1.44. A ratio below 0.9 means the
    images were given the other way round.

    Different bodies (line-integral inputs only, e.g. DRRs): the sum of a projection is the attenuation integrated
    over the whole volume, the same from every angle (exactly for parallel rays; within 6% for the cone beam on the
    phantoms and the real CT). Two images that differ by more than 15% do not show the same body. Clinical
    radiographs have unknown processing, so only the swap test applies to them.
    """
    wf, wl = _body_width(frontal), _body_width(lateral)
    if wl > 0 and wf / wl < 0.9:
        raise InputError(
            f"the frontal and lateral X-rays look swapped: the body spans {wf} detector columns in the frontal image "
            f"and {wl} in the lateral one, but a chest is wider than it is deep; swap the two files (or turn "
            "check_views off if the views are really like this)"
        )
    if line_integrals:
        sf, sl = float(torch.as_tensor(frontal).sum()), float(torch.as_tensor(lateral).sum())
        if sl > 0 and not 0.85 <= sf / sl <= 1.15:
            raise InputError(
                f"the frontal and lateral X-rays do not show the same body: their total attenuation differs by "
                f"{abs(sf / sl - 1):.0%} (views of one body agree within about 6%); check that both files belong to "
                "the same case"
            )


def check_view_paths(frontal_path="", lateral_path="", required: bool = False) -> None:
    """Both X-ray paths or neither (``required``: both), as bundle keys ``frontal_path``/``lateral_path``; each given
    file must exist. The models see the two views together, so one alone is refused before anything is loaded."""
    paths = {"frontal": frontal_path, "lateral": lateral_path}
    if not (frontal_path or lateral_path) and not required:
        return
    for view, other in (("frontal", "lateral"), ("lateral", "frontal")):
        if not paths[view]:
            raise InputError(
                f"no {view} X-ray given; set {view}_path (a DICOM, PNG or NIfTI file) next to {other}_path: the two "
                "views go in together"
            )
    for view, path in paths.items():
        need_file(path, f"{view}_path")


class LoadXRayd(MapTransform):
    """Dictionary transform: read the radiographs of ``keys`` and turn them into network inputs on the detector grid.

    The one path from an X-ray file to network input, for training, inference, evaluation and the MONAI Label app.
    NIfTI files are taken as this project's DRRs (line integrals; only :func:`line_integral_to_input` is applied);
    DICOM and PNG radiographs are clinical images whose processing is unknown, so their range is matched to the
    DRRs' (:func:`match_drr_range`). The result of each key is a (1, N, N) float tensor; ``<key>_meta`` keeps the
    source path and whether the range was matched.

    Args:
        keys: the X-ray keys, e.g. ``["frontal", "lateral"]``.
        geometry: preset name or :class:`ProjectionGeometry` of the model's X-rays.
        size: detector pixels per side the network expects.
        check_views: refuse a frontal/lateral pair that looks swapped or taken from two different bodies
            (:func:`check_view_pair`).
        allow_missing_keys: skip absent or empty keys instead of refusing them (networks without X-ray input).
    """

    def __init__(self, keys, geometry="x2ctgan", size: int = 64, check_views: bool = True, allow_missing_keys=False):
        from custom.core.physics import get_geometry

        super().__init__(keys, allow_missing_keys)
        self.check_views = as_bool(check_views, "check_views")  # 'false' from a command line is a truthy string
        geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
        self.geometry = geo.resized(int(size))

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        present = [k for k in self.keys if data.get(k) not in (None, "")]
        if not self.allow_missing_keys:
            for key in self.keys:
                if key not in present:
                    raise InputError(f"no {key} X-ray given; set {key} (a DICOM, PNG or NIfTI file)")
        for key in present:
            path = str(data[key])
            det = to_detector(load_xray(path), self.geometry)
            drr = path.lower().endswith((".nii", ".nii.gz"))
            out[key] = line_integral_to_input(det) if drr else match_drr_range(det)
            out[f"{key}_meta"] = {"filename_or_obj": path, "range_matched": not drr}
        shapes = {tuple(out[k].shape) for k in present}
        if len(shapes) > 1:
            raise InputError(f"the X-rays have different shapes after resampling: {shapes}")
        if self.check_views and set(present) >= {"frontal", "lateral"}:
            line_integrals = not (out["frontal_meta"]["range_matched"] or out["lateral_meta"]["range_matched"])
            check_view_pair(out["frontal"], out["lateral"], line_integrals)
        return out
