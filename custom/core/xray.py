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
# Radiograph detectors have pixels of at least 0.01 mm, and an image covers at most a 43 cm cassette with some
# margin: a header whose spacing breaks either is broken (100 mm per pixel: a 200 m image), not a radiograph.
MIN_SPACING_MM = 0.01
MAX_FIELD_MM = 800.0
# When a radiograph carries no usable spacing, its longer side is taken as the long side of a 35 x 43 cm (14 x 17 in)
# cassette, the common size for chest radiographs.
FALLBACK_FIELD_MM = 430.0
FRONTAL_POSITIONS = ("PA", "AP")
LATERAL_POSITIONS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
VIEW_KEYS = ("frontal", "lateral")
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
    meta = {"filename_or_obj": str(path), "spacing_known": spacing is not None, "spacing_plane": "detector", **extra}
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
    intake = radiograph_intake(ds, arr.shape, path)
    if intake["flip_columns"]:
        arr = arr[:, ::-1]
    if intake["flip_rows"]:
        arr = arr[::-1, :]
    spacing = intake.pop("spacing")
    return _meta_tensor(arr.T, spacing, path, {"modality": modality, **intake})


def _valid_spacing(ds, tag: str, path: Path, shape_rows_cols):
    """(between rows, between columns) in mm from ``tag``, None when absent or zero; an error when it is nonsense."""
    value = getattr(ds, tag, None)
    if value is None or value == "":
        return None
    try:
        values = [float(v) for v in np.atleast_1d(np.asarray(list(value) if hasattr(value, "__iter__") else value))]
    except (TypeError, ValueError):
        raise InputError(f"{path}: {tag} {value!r} is not a number pair; correct or remove it") from None
    if len(values) != 2 or not all(np.isfinite(values)):
        raise InputError(f"{path}: {tag} must be two numbers (row and column spacing in mm), got {value!r}")
    if all(v == 0 for v in values):
        return None  # written by systems that do not know the spacing: treated as absent
    field = [v * n for v, n in zip(values, shape_rows_cols)]
    if not all(v >= MIN_SPACING_MM for v in values) or max(field) > MAX_FIELD_MM:
        raise InputError(
            f"{path}: {tag} {values} mm makes the image {field[0]:.4g} x {field[1]:.4g} mm, not a radiograph (pixels "
            f"of at least {MIN_SPACING_MM:g} mm, at most {MAX_FIELD_MM:g} mm a side); correct the header, or remove "
            "the tag to place the image as a standard 35 x 43 cm cassette"
        )
    return values


def _magnification(ds):
    """(radiographic magnification, where it came from): the Estimated Radiographic Magnification Factor, else the
    ratio of source-to-detector and source-to-patient distances; (None, '') when neither is usable."""
    try:
        ermf = float(getattr(ds, "EstimatedRadiographicMagnificationFactor", 0) or 0)
    except (TypeError, ValueError):
        ermf = 0.0
    if 1.0 <= ermf <= 3.0:
        return ermf, "EstimatedRadiographicMagnificationFactor"
    try:
        sid = float(getattr(ds, "DistanceSourceToDetector", 0) or 0)
        sod = float(getattr(ds, "DistanceSourceToPatient", 0) or 0)
    except (TypeError, ValueError):
        return None, ""
    if 0 < sod < sid:
        return sid / sod, "DistanceSourceToDetector / DistanceSourceToPatient"
    return None, ""


def radiograph_intake(ds, shape_rows_cols, path) -> dict:
    """How a DICOM radiograph is placed on the model's detector: pixel spacing and its plane, view, flips, warnings.

    Spacing, in order of trust: Pixel Spacing when it is calibrated to the patient (it differs from Imager Pixel
    Spacing, or a calibration type or magnification factor says so); Imager Pixel Spacing (the detector), taken to
    the patient plane with the radiographic magnification when the header gives it; Pixel Spacing alone (most CR
    writes the detector pitch there). Without any of these, the image's longer side is taken as a 43 cm cassette
    and a warning is recorded. ``spacing_plane`` says where the spacing holds: ``patient`` (to be magnified by the
    model's geometry) or ``detector`` (used as the model's detector pitch, as for the project's own DRRs).

    View: View Position (PA/AP frontal; LL/RL/LATERAL lateral) or, without it, nothing. Patient Orientation (the
    directions of the image's rows and columns) decides mirroring: the model's frontal view shows the patient's
    right on the left and the head at the top, its lateral view anterior on the left; an image stored the other way
    is flipped and the flip recorded.
    """
    warnings = []
    ps = _valid_spacing(ds, "PixelSpacing", path, shape_rows_cols)
    ips = _valid_spacing(ds, "ImagerPixelSpacing", path, shape_rows_cols)
    mag, mag_source = _magnification(ds)
    calibrated = ps is not None and (
        (ips is not None and not np.allclose(ps, ips, rtol=1e-3))
        or bool(getattr(ds, "PixelSpacingCalibrationType", ""))
    )
    if calibrated:
        spacing_rc, tag, source, plane = ps, "PixelSpacing", "calibrated to the patient", "patient"
    elif ips is not None and mag is not None:
        spacing_rc, tag, plane = [v / mag for v in ips], "ImagerPixelSpacing", "patient"
        source = f"detector pitch / {mag_source} ({mag:.3f})"
    elif ips is not None or ps is not None:
        spacing_rc = ips if ips is not None else ps
        tag, plane = ("ImagerPixelSpacing" if ips is not None else "PixelSpacing"), "detector"
        source = "taken as the detector pitch in the model's geometry (no magnification in the header)"
    else:
        side = FALLBACK_FIELD_MM / max(shape_rows_cols)
        spacing_rc, tag, plane = [side, side], "", "detector"
        source = f"none: the longer side taken as {FALLBACK_FIELD_MM:g} mm"
        warnings.append(
            f"{Path(str(path)).name}: no usable pixel spacing (Pixel Spacing and Imager Pixel Spacing absent or zero); "
            f"the image was placed as a {FALLBACK_FIELD_MM / 10:g} cm cassette ({side:.3f} mm per pixel): check the "
            "reconstruction's size, or add the spacing to the header"
        )
    position = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    view = "frontal" if position in FRONTAL_POSITIONS else "lateral" if position in LATERAL_POSITIONS else ""
    orientation = [str(o).upper() for o in (getattr(ds, "PatientOrientation", None) or [])]
    flip_columns = flip_rows = False
    if len(orientation) == 2 and view:
        # the direction in which column numbers grow (along a row), then row numbers grow (down a column)
        along_row, down_column = orientation
        expected_row = "L" if view == "frontal" else "P"  # frontal: patient's right on the left; lateral: anterior
        opposite = {"L": "R", "R": "L", "P": "A", "A": "P"}[expected_row]
        flip_columns = along_row.startswith(opposite)
        flip_rows = down_column.startswith("H")  # head at the bottom
        if flip_columns or flip_rows:
            which = " and ".join(w for w, f in (("left-right", flip_columns), ("top-bottom", flip_rows)) if f)
            warnings.append(f"{Path(str(path)).name}: Patient Orientation {orientation}: image flipped {which}")
    return {
        "spacing": (spacing_rc[1], spacing_rc[0]),  # (u: along a row = column spacing, v: between rows)
        "spacing_tag": tag,
        "spacing_source": source,
        "spacing_plane": plane,
        "view": view,
        "view_position": position,
        "flip_columns": flip_columns,
        "flip_rows": flip_rows,
        "warnings": warnings,
    }


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
        if xray.meta.get("spacing_plane") == "patient":
            sp = [s * geometry.magnification for s in sp]  # the body as the model's geometry would project it
        extent = geometry.detector_extent
        side = [max(1, int(round(extent / s))) for s in sp]
        bg = float(img.min())
        img = ResizeWithPadOrCrop(side, mode="constant")(img - bg) + bg  # zero fill of img - bg: background
    n = geometry.detector_pixels
    out = Resize((n, n), mode="area" if img.shape[-1] > n else "bilinear")(img)
    # a plain tensor: the reader's record travels in ``<key>_meta``, not in tensor metadata the collation must stack
    return (out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)).float()


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


# Frontal/lateral ratio of the total attenuation beyond which two DRRs are not views of one body (measured range in
# the docstring of check_view_pair).
MAX_SUM_RATIO = 1.25
# How much stronger the lateral image's midline ridge must be than the frontal's before the pair is called swapped:
# a small margin, so that two images with almost equal ridges (unusual views, strong processing) are not refused on a
# coin flip; correctly ordered pairs measured 0.07 or more in their favour (docstring of check_view_pair).
SWAP_MARGIN = 0.05
# Below this neither image looks frontal (frontal ridges measured 0.21 or more on DRRs): the message says so.
FRONTAL_RIDGE = 0.15


def _mirror_axis(profile: torch.Tensor, reach: int) -> float:
    """Position (in samples, may be a half) about which ``profile`` best matches its own mirror image (Pearson
    correlation over the overlap), searched within ``reach`` samples of the middle."""
    n = profile.shape[0]
    best, axis = -2.0, (n - 1) / 2
    for k in range(-reach, reach + 1):
        lo, hi = max(0, k), min(n - 1, n - 1 + k)  # sample u meets sample n - 1 + k - u
        a = profile[lo : hi + 1]
        b = profile[n - 1 + k - hi : n + k - lo].flip(0)
        a, b = a - a.mean(), b - b.mean()
        corr = float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))
        if corr > best:
            best, axis = corr, (n - 1 + k) / 2
    return axis


def central_ridge(img: torch.Tensor) -> float:
    """How much brighter a chest X-ray is along its axis of left-right symmetry than beside it (the view feature of
    :func:`check_view_pair`).

    The column profile (mean of each detector column ``u``, lightly smoothed) is taken about its mirror-symmetry
    axis: the mean within 1/16 of the width of the axis, minus the brighter of the two flanks 0.2 to 0.3 of the
    width away from it, divided by the 1st..99th percentile range of the image. A frontal view has the spine and
    mediastinum on that axis between the two dark lungs (0.21 to 0.63 measured); a lateral view has the lungs in the
    middle of the body with the spine behind and the heart and chest wall in front (-0.30 to 0.12). The ratio
    to a percentile range makes it the same for line integrals and for a clinical image after any linear range
    mapping, and independent of how much of the body the detector covers, where the body's width is not.
    """
    x = torch.as_tensor(img).detach().float().reshape(img.shape[-2:])  # [u, v]
    n = x.shape[0]
    profile = x.mean(dim=1)
    k = max(1, round(n / 32))  # a few mm: ribs and noise are not the feature
    if k > 1:
        padded = torch.nn.functional.pad(profile[None, None], (k // 2, (k - 1) // 2), mode="replicate")
        profile = torch.nn.functional.avg_pool1d(padded, k, stride=1)[0, 0]
    axis = _mirror_axis(profile, n // 4)
    dist = (torch.arange(n, dtype=torch.float32) - axis).abs()
    centre = profile[dist <= max(n / 16, 1.0)].mean()
    flank_band = (dist >= n / 5) & (dist <= 0.3 * n)
    below = torch.arange(n, dtype=torch.float32) < axis
    flanks = [profile[flank_band & side] for side in (below, ~below)]
    flank = max(float(f.mean()) if f.numel() else float(profile.min()) for f in flanks)
    values = x.reshape(-1)[:: max(1, x.numel() // 1_000_000)]
    lo, hi = torch.quantile(values, torch.tensor([0.01, 0.99]))
    scale = float(hi - lo)
    return (float(centre) - flank) / scale if scale > 0 else 0.0


def check_view_pair(frontal: torch.Tensor, lateral: torch.Tensor, line_integrals: bool = True) -> None:
    """Raise :class:`InputError` when two X-rays cannot be a frontal and a lateral view of the same chest.

    Swapped views: a frontal chest X-ray shows the bright spine and mediastinum on its axis of symmetry between the
    two dark lungs; a lateral one shows the lungs in the middle with the spine at one side. :func:`central_ridge`
    measures that; the pair looks swapped when the lateral image has the stronger ridge. Measured with
    ``python docs/make_phantom_real_figure.py --view-pair-stats PREPARED_DIR`` (frontal ridge minus lateral ridge
    of correctly ordered pairs, smallest and median; a swapped pair gives the same numbers negated, so 0 sits in
    the middle; a pair is refused beyond ``SWAP_MARGIN``): basic phantoms 0.33 and 0.51 (105 pairs; 0.29 with the
    body turned, shifted or scaled),
    realistic phantoms 0.22 and 0.54 (105 pairs; moved 0.35), the three real CTs 0.40 and 0.47 (their DRRs at 32 to
    256 px; moved 0.24). Frontal ridges were 0.21 to 0.63, lateral ones -0.30 to 0.12. On radiograph-like images
    (``1 - exp(-L/2)`` of the line integral, range-matched) the smallest margin was 0.07 (realistic phantoms) and
    0.15 (real CTs). The width of the body in each view, the feature used before, fails on real chests and realistic
    phantoms: the detector (285 mm wide at the isocentre in the X2CT-GAN geometry) is narrower than most chests and
    the scanner table widens the lateral view, so the frontal/lateral width ratio was 1.0-1.31 on realistic
    phantoms and 0.98-1.28 on the real CTs, and most swapped pairs passed its threshold of 0.9.

    Different bodies (line-integral inputs only, e.g. DRRs): the sum of a projection is the attenuation integrated
    over the whole volume, the same from every angle for parallel rays. With the cone beam and a detector narrower
    than the body, parts of the body (arms, the table) fall outside one view but not the other: the frontal/lateral
    ratio of the sums was 0.91-1.08 on basic phantoms, 0.89-1.16 on realistic ones and 0.92-1.08 on the real
    CTs (same runs). Sums that differ by more than a factor of 1.25 do not show the same body.
    Clinical radiographs have unknown processing, so only the swap test applies to them.
    """
    if min(frontal.shape[-2:]) >= 8 and min(lateral.shape[-2:]) >= 8:  # smaller images carry no anatomy to compare
        rf, rl = central_ridge(frontal), central_ridge(lateral)
        if rl - rf > SWAP_MARGIN and max(rf, rl) < FRONTAL_RIDGE:
            raise InputError(
                f"neither X-ray shows the bright midline between two dark lungs of a frontal chest view (ridge "
                f"{rf:.2f} in the image given as frontal, {rl:.2f} in the lateral); check that the files are a "
                "frontal and a lateral chest X-ray of one patient (or turn check_views off)"
            )
        if rl - rf > SWAP_MARGIN:
            raise InputError(
                f"the frontal and lateral X-rays look swapped: the image given as lateral has the bright midline "
                f"between two dark lungs of a frontal view (ridge {rl:.2f}, against {rf:.2f} in the image given as "
                "frontal); swap the two files (or turn check_views off if the views are really like this)"
            )
    if line_integrals:
        sf, sl = float(torch.as_tensor(frontal).sum()), float(torch.as_tensor(lateral).sum())
        if sf > 0 and sl > 0 and not 1 / MAX_SUM_RATIO <= sf / sl <= MAX_SUM_RATIO:
            raise InputError(
                f"the frontal and lateral X-rays do not show the same body: their total attenuation differs by a "
                f"factor of {max(sf / sl, sl / sf):.2f} (views of one body agree within {MAX_SUM_RATIO}); check that "
                "both files belong to the same case"
            )
        if (sf > 0) != (sl > 0):
            raise InputError(
                "the frontal and lateral X-rays do not show the same body: one of them holds no attenuation at all; "
                "check that both files belong to the same case"
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
            img = load_xray(path)
            if self.check_views and img.meta.get("view") and img.meta["view"] != key and key in VIEW_KEYS:
                tagged = img.meta["view"]
                raise InputError(
                    f"{path}: its View Position {img.meta['view_position']} says it is a {tagged} radiograph, but it "
                    f"was given as the {key} X-ray; give it as {tagged}_path (a pair needs one frontal, PA or AP, "
                    "and one lateral view)"
                )
            drr = path.lower().endswith((".nii", ".nii.gz"))
            if drr:
                check_drr_file(img, self.geometry)
            det = to_detector(img, self.geometry)
            out[key] = line_integral_to_input(det) if drr else match_drr_range(det)
            # strings and booleans only: the batch collation of MONAI's DataLoader refuses None
            out[f"{key}_meta"] = {
                "filename_or_obj": path,
                "range_matched": not drr,
                "view_position": img.meta.get("view_position") or "",
                "spacing": _spacing_note(img),
                "warnings": "\n".join(img.meta.get("warnings") or []),
            }
        shapes = {tuple(out[k].shape) for k in present}
        if len(shapes) > 1:
            raise InputError(f"the X-rays have different shapes after resampling: {shapes}")
        if self.check_views and set(present) >= {"frontal", "lateral"}:
            same_file = Path(str(data["frontal"])).resolve() == Path(str(data["lateral"])).resolve()
            if same_file or torch.allclose(out["frontal"], out["lateral"], atol=1e-6):
                raise InputError(
                    "the frontal and lateral X-rays are the same image; give the two views of the chest, one from "
                    "the front (PA or AP) and one from the side"
                )
            line_integrals = not (out["frontal_meta"]["range_matched"] or out["lateral_meta"]["range_matched"])
            check_view_pair(out["frontal"], out["lateral"], line_integrals)
        return out


# Line integrals of chest DRRs: about 4 through 20 cm of soft tissue, under 15 even laterally through the shoulders;
# a maximum far above that is an image in other units (scaled, or transmitted intensity), not a DRR of a chest.
MAX_LINE_INTEGRAL = 20.0


def check_drr_file(img: MetaTensor, geometry: ProjectionGeometry) -> None:
    """Refuse a NIfTI X-ray that is not a DRR in this project's units or does not fit the model's detector.

    NIfTI X-rays are taken as line integrals on the detector (what ``drr`` and ``prepare`` write), so nothing about
    them is rescaled: values in other units, or a header spacing that puts the image on a detector of another size
    (a 1 mm identity affine: a 64 mm image where the model expects 500 mm), would reconstruct silently wrong.
    """
    path = img.meta.get("filename_or_obj", "the X-ray")
    x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    top, bottom = float(x.max()), float(x.min())
    if not 0 < top <= MAX_LINE_INTEGRAL or bottom < -0.05 * top:
        raise InputError(
            f"{path}: values from {bottom:.4g} to {top:.4g} are not DRR line integrals (0 to about 10 for a chest, "
            "never negative); a NIfTI X-ray must be a DRR written by `python -m custom drr` or `prepare`. Give a "
            "clinical radiograph as DICOM or PNG instead: its range is matched automatically"
        )
    field = max(float(s) * n for s, n in zip(img.pixdim[:2], x.shape[-2:]))
    extent = geometry.detector_extent
    if not 0.5 <= field / extent <= 2.0:
        raise InputError(
            f"{path}: its header spacing makes the image {field:.4g} mm wide, but the model's detector is "
            f"{extent:.4g} mm; DRRs carry their detector pitch in the header (write them with `python -m custom drr`, "
            "or set the NIfTI pixel spacing to the detector's)"
        )


def _spacing_note(img: MetaTensor) -> str:
    """How the radiograph's pixel spacing was found, for the record a reconstruction keeps (ct.json)."""
    if not img.meta.get("spacing_known"):
        return "unknown: the whole image taken as the detector"
    u, v = (float(s) for s in img.pixdim[:2])
    tag = img.meta.get("spacing_tag") or "no tag"
    source = img.meta.get("spacing_source") or "file header"
    return f"{u:.4g} x {v:.4g} mm at the {img.meta.get('spacing_plane', 'detector')} plane ({tag}: {source})"


def intake_record(item: dict, files: bool = True) -> dict:
    """What :class:`LoadXRayd` found and assumed about each radiograph of a loaded item (view tag, pixel spacing and
    its source, warnings such as a missing spacing), for the record a reconstruction keeps; ``files=False`` leaves
    out the file paths (a server must not tell its clients where it keeps files)."""
    keys = (
        ("filename_or_obj", "view_position", "spacing", "warnings")
        if files
        else ("view_position", "spacing", "warnings")
    )
    record = {}
    for view in VIEW_KEYS:
        meta = item.get(f"{view}_meta")
        if isinstance(meta, dict):
            record[view] = {k: meta[k] for k in keys if k in meta}
    warnings = [w for r in record.values() for w in str(r.get("warnings", "")).split("\n") if w]
    return {**record, "warnings": warnings}
