"""Reading CT volumes (NIfTI, NRRD and MetaImage files, DICOM series) into MONAI MetaTensors in Hounsfield units.

Headers are checked before any pixel data is read, so a corrupt or hostile header (a 10^5-cubed volume, several
series in one folder, missing slices) is rejected with a clear :class:`~custom.core.errors.InputError` instead of an
allocation failure or a silently wrong volume. MONAI's ``LoadImage`` reads first and asks later, and would
stack several DICOM series of a folder, hence this reader.

NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) go through SimpleITK, whose header-only
``ReadImageInformation`` allows the same checks before any pixel is read; ITK's physical space is LPS, turned into
RAS here exactly as for DICOM, so one volume stored as NIfTI, NRRD or MetaImage reads back identically.

The returned MetaTensor has shape (1, X, Y, Z), float32 HU, and an affine in RAS millimetres (the MONAI
convention), ready for ``Orientation("RAS")`` and ``Spacing``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from custom.core.errors import InputError

# Largest volume accepted: 2^30 voxels is 4 GiB as float32, beyond any clinical CT (512 x 512 x 4096).
MAX_VOXELS = 2**30
HU_MIN, HU_MAX = -1024.0, 3071.0
# Scanners store -2048, -3024 (or anything below the -1024 floor of the 12-bit HU scale) outside the reconstructed
# field of view: no tissue was measured there, and it is read as air. -1000 rather than -1024 because that is what
# air is (and what the phantoms use), so a model is not scored against an arbitrary fill value.
AIR_HU = -1000.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # read through SimpleITK
CT_FILE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_itk(path: Path) -> bool:
    return path.name.lower().endswith(ITK_SUFFIXES)


def is_volume_file(path: Path) -> bool:
    """A file ``load_ct`` reads by its name: NIfTI, NRRD or MetaImage (header files; not their ``.raw`` data)."""
    return path.name.lower().endswith(CT_FILE_SUFFIXES)


def segmentation_reason(path: Path) -> str | None:
    """Why ``path`` is a segmentation rather than a CT (3D Slicer ``*.seg.nrrd``, a name with ``mask`` in it), or
    None. Such files share the CT's grid and format, so only the name tells them apart."""
    name = path.name.lower()
    if name.endswith((".seg.nrrd", ".seg.nhdr")):
        return "a 3D Slicer segmentation (*.seg.nrrd), not a CT"
    if "mask" in name:
        return "a mask (the file name contains 'mask'), not a CT"
    return None


def _check_size(shape, what: str, max_voxels: int) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if any(int(s) <= 0 for s in shape):
        raise InputError(f"{what}: the header gives an empty shape {tuple(shape)}; the file is corrupt")
    if n > max_voxels:
        raise InputError(
            f"{what}: the header claims {tuple(int(s) for s in shape)} = {n:.3g} voxels, more than the "
            f"{max_voxels:.3g} accepted (max_voxels); the header is corrupt or the file is not a CT volume"
        )


def _check_affine(affine: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{what}: the orientation/spacing in the header is invalid (singular or NaN affine)")


def read_nifti_ct(path: Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """(array (X, Y, Z) float32 as stored times scl_slope plus scl_inter, RAS affine)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))  # reads the header only
    except Exception as e:  # nibabel raises many types for bad files
        raise InputError(f"{path}: not a readable NIfTI file ({e})") from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"{path}: a CT volume needs 3 dimensions, this file has shape {img.shape}"
            + (" (a 2D image: use it as an X-ray, not as a CT)" if len(shape) == 2 else "")
        )
    _check_size(shape, str(path), max_voxels)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, str(path))
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as e:
        raise InputError(f"{path}: the pixel data cannot be read ({e}); the file is truncated or corrupt") from None
    return data, affine


def read_itk_ct(path: Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """(array (X, Y, Z) float32 as stored, RAS affine) of an NRRD or MetaImage file, through SimpleITK.

    The header is read and checked first (dimensions, one component per voxel, size, direction and spacing); ITK
    gives direction cosines and origin in LPS, converted to RAS like the DICOM path.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "no detail"
        raise InputError(f"{path}: not a readable NRRD/MetaImage file ({msg})") from None
    shape = tuple(int(s) for s in reader.GetSize())
    dim = len(shape)
    if dim == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"{path}: a CT volume needs 3 dimensions, this file has size {tuple(reader.GetSize())}"
            + (" (a 2D image: use it as an X-ray, not as a CT)" if len(shape) == 2 else "")
        )
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path}: {reader.GetNumberOfComponents()} values per voxel (a vector, RGB or multi-layer segmentation "
            "image); a CT has one value per voxel"
        )
    _check_size(shape, str(path), max_voxels)
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)[:3]
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    origin = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]  # column k: step along voxel axis k, mm
    lps[:3, 3] = origin
    if not np.all(spacing > 0):
        raise InputError(f"{path}: the header gives a spacing of {tuple(spacing)} mm; spacings must be positive")
    _check_affine(lps, str(path))
    try:
        img = reader.Execute()
        arr = sitk.GetArrayViewFromImage(img)  # (Z, Y, X) (or (T=1, Z, Y, X)): ITK's index order reversed
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "no detail"
        raise InputError(
            f"{path}: the pixel data cannot be read ({msg}); the file is truncated or corrupt, or the data file it "
            "names (.raw/.zraw/.gz next to a .mhd/.nhdr header) is missing"
        ) from None
    data = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).reshape(shape[::-1]).transpose(2, 1, 0))
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return data, ras


def _maybe_dicom(p: Path) -> bool:
    return (
        p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in (".dcm", ".dicom", ".ima", "") or p.name.replace(".", "").isdigit())
    )


def _dicom_files(folder: Path, recursive: bool = False) -> list[Path]:
    return [p for p in sorted(folder.rglob("*") if recursive else folder.iterdir()) if _maybe_dicom(p)]


def _series_headers(folder: Path, recursive: bool = False, rejected: list | None = None):
    """{SeriesInstanceUID: [(file, header), ...]} of the image files in ``folder``; files that are not DICOM images
    are appended to ``rejected`` as (path, reason) when a list is given (``prepare`` reports them)."""
    import pydicom

    series: dict = {}
    for f in _dicom_files(folder, recursive):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:
            if rejected is not None:  # not DICOM (a README, a LICENSE, a thumbnail...)
                rejected.append((f, "not a DICOM file (and not a NIfTI, NRRD or MetaImage file)"))
            continue
        if "ImagePositionPatient" not in ds and "PixelSpacing" not in ds:
            if rejected is not None:
                rejected.append((f, "a DICOM file without an image position or pixel spacing (DICOMDIR, report)"))
            continue
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "?")), []).append((f, ds))
    return series


def read_dicom_ct(
    folder: Path, series_uid: str | None = None, max_voxels: int = MAX_VOXELS
) -> tuple[np.ndarray, np.ndarray]:
    """(array (X, Y, Z) float32 HU, RAS affine) of one CT series in ``folder``.

    Checks, from the headers alone: one series (or ``series_uid``), modality CT, equal rows/columns/orientation,
    even slice spacing. Pixel values go through Rescale Slope/Intercept.
    """
    series = _series_headers(folder) or _series_headers(folder, recursive=True)
    if not series:
        raise InputError(f"{folder}: no DICOM image files found")
    if series_uid is None and len(series) > 1:
        lines = [
            f"  {uid}: {len(items)} files, {getattr(items[0][1], 'Modality', '?')}, "
            f"'{getattr(items[0][1], 'SeriesDescription', '')}'"
            for uid, items in series.items()
        ]
        raise InputError(
            f"{folder} holds {len(series)} DICOM series; choose one with series_uid (--series_uid):\n"
            + "\n".join(lines)
        )
    uid = series_uid if series_uid is not None else next(iter(series))
    if uid not in series:
        raise InputError(f"{folder}: no series with SeriesInstanceUID {uid}; found {sorted(series)}")
    items = series[uid]
    modality = str(getattr(items[0][1], "Modality", ""))
    if modality and modality != "CT":
        raise InputError(f"{folder}: series {uid} has modality {modality}, not CT")
    if len(items) < 2:
        raise InputError(f"{folder}: series {uid} has a single slice; a CT volume needs several (2D data)")

    def tag(ds, name):
        v = getattr(ds, name, None)
        if v is None:
            raise InputError(f"{folder}: a slice lacks the {name} tag; cannot place slices in space")
        return v

    rows, cols = int(tag(items[0][1], "Rows")), int(tag(items[0][1], "Columns"))
    orient = np.array(tag(items[0][1], "ImageOrientationPatient"), dtype=np.float64)
    for f, ds in items:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{folder}: slices of different sizes in one series ({f.name}); the series is mixed")
        if not np.allclose(np.array(tag(ds, "ImageOrientationPatient"), dtype=np.float64), orient, atol=1e-4):
            raise InputError(f"{folder}: slices with different orientations in one series ({f.name})")
    _check_size((cols, rows, len(items)), str(folder), max_voxels)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.array(tag(ds, "ImagePositionPatient"), dtype=np.float64) for _, ds in items])
    order = np.argsort(pos @ normal)
    items = [items[i] for i in order]
    pos = pos[order]
    gaps = np.diff(pos @ normal)
    if np.any(gaps < 1e-3):
        raise InputError(f"{folder}: two slices share a position; the series holds duplicates or several volumes")
    dz = float(np.median(gaps))
    if np.max(np.abs(gaps - dz)) > max(0.01 * dz, 0.01):
        worst = int(np.argmax(np.abs(gaps - dz)))
        raise InputError(
            f"{folder}: slices of uneven spacing (median {dz:.3f} mm, {gaps[worst]:.3f} mm between slices "
            f"{worst} and {worst + 1}); slices are missing or the series mixes acquisitions. Resample it into one "
            "evenly spaced volume (e.g. to NIfTI) first"
        )
    ps = [float(v) for v in tag(items[0][1], "PixelSpacing")]  # (row spacing, column spacing)

    import pydicom

    # slices go straight into one preallocated (slices, rows, cols) block, transposed once at the end (a list of
    # slices, np.stack and a transpose copied every voxel three times)
    stack = np.empty((len(items), rows, cols), dtype=np.float32)
    for k, (f, _) in enumerate(items):
        try:
            ds = pydicom.dcmread(str(f))
            arr = ds.pixel_array
        except Exception as e:
            raise InputError(
                f"{f}: the pixel data cannot be decoded ({e}); the file is corrupt or its "
                "compression is unsupported (install pylibjpeg/gdcm for JPEG-compressed DICOM)"
            ) from None
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        inter = float(getattr(ds, "RescaleIntercept", 0.0))
        np.multiply(arr, np.float32(slope), out=stack[k], casting="unsafe")
        stack[k] += np.float32(inter)
    vol = stack.transpose(2, 1, 0)  # (cols = i along row_dir, rows = j along col_dir, k)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = normal * dz
    lps[:3, 3] = pos[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return np.ascontiguousarray(vol), ras


def check_hu(data: np.ndarray, what: str) -> None:
    """Reject volumes that are not CT in HU: NaN/Inf, already normalized, or far outside the HU scale."""
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{what}: {n} voxels are NaN or infinite; fix or mask them before use")
    lo, hi = float(data.min()), float(data.max())
    if lo >= -1.0001 and hi <= 1.0001:
        raise InputError(
            f"{what}: values lie in [{lo:.3g}, {hi:.3g}], i.e. already normalized to [-1, 1] or [0, 1]; give the CT in "
            "Hounsfield units (use custom.core.transforms.window_to_hu to undo this project's window)"
        )
    if lo < -4000 or hi > 40000:
        raise InputError(
            f"{what}: values range over [{lo:.4g}, {hi:.4g}], far outside CT's -1024..3071 HU; this is not a CT in "
            "HU (an MR volume, or stored values without Rescale Slope/Intercept?)"
        )
    if np.percentile(data, 1) >= 0:
        raise InputError(
            f"{what}: no air or fat (99% of values >= 0, range [{lo:.4g}, {hi:.4g}]); CT in HU puts air at -1000. "
            "This looks like raw stored values (missing Rescale Intercept) or another modality"
        )


def load_ct(path, series_uid: str | None = None, max_voxels: int = MAX_VOXELS) -> MetaTensor:
    """Load a CT from a NIfTI, NRRD or MetaImage file or a folder holding a DICOM series.

    Values below -1024 HU (the -2048 or -3024 scanners store outside the reconstruction circle, where nothing was
    measured) become air, ``AIR_HU`` = -1000; values above 3071 HU (extended-scale metal) are clipped to 3071.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr`` or ``.mha``/``.mhd`` file, or a folder of DICOM files.
        series_uid: the series to read when a folder holds several.
        max_voxels: largest accepted volume; headers claiming more are rejected before reading pixels.

    Returns:
        MetaTensor (1, X, Y, Z) float32 HU, RAS affine, with ``filename_or_obj`` set.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        data, affine = read_dicom_ct(path, series_uid, max_voxels)
    elif _is_nifti(path):
        data, affine = read_nifti_ct(path, max_voxels)
    elif _is_itk(path):
        if path.name.lower().endswith((".seg.nrrd", ".seg.nhdr")):
            raise InputError(f"{path}: a 3D Slicer segmentation (*.seg.nrrd), not a CT; give the CT volume it labels")
        data, affine = read_itk_ct(path, max_voxels)
    elif path.suffix.lower() in (".dcm", ".dicom"):
        raise InputError(f"{path}: a single DICOM file; give the folder that holds the whole series")
    else:
        raise InputError(
            f"{path}: unsupported CT format; give a .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd file or a DICOM series "
            "folder"
        )
    check_hu(data, str(path))
    if not data.flags.writeable:  # a memory-mapped NIfTI: changed in memory only, never on disk
        data = np.array(data)
    data[data < HU_MIN] = AIR_HU  # fill outside the scan field: nothing measured there, read as air
    np.clip(data, HU_MIN, HU_MAX, out=data)
    meta = {"filename_or_obj": str(path), "space": "RAS", "original_affine": affine.copy()}
    ct = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(affine), meta=meta)
    return axis_aligned(ct)


def is_oblique(affine, tolerance: float = 1e-3) -> bool:
    """True when the voxel axes are not the patient axes up to order and sign (a tilted gantry, a rotated or
    sheared volume)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = a / np.linalg.norm(a, axis=0, keepdims=True)
    return bool(np.abs(np.abs(cosines).max(axis=0) - 1).max() > tolerance)


def axis_aligned(ct: MetaTensor) -> MetaTensor:
    """``ct`` on a grid whose axes are the patient axes, resampled in physical space when its affine is oblique.

    Every consumer (DRRs, ``prepare``, the refiners, the app) works on axis-aligned grids: doing the resampling here,
    once, at reading, keeps all of them honest instead of each treating a rotated volume as if it were upright.
    The new grid keeps the voxel size of the old axes and covers the whole volume; outside it is air.
    """
    if not is_oblique(ct.affine):
        return ct
    from monai.transforms import Spacing

    spacing = np.linalg.norm(np.asarray(ct.affine, dtype=np.float64)[:3, :3], axis=0)
    # resample HU + 1024 with zero padding so that what lies outside the original volume reads as air
    meta = {k: v for k, v in ct.meta.items() if k != "affine"}
    shifted = MetaTensor(ct.as_tensor() - HU_MIN, affine=ct.affine, meta=meta)
    out = Spacing(pixdim=tuple(float(s) for s in spacing), diagonal=True, mode="bilinear", padding_mode="zeros")(
        shifted
    )
    out = out + HU_MIN
    out.meta["resampled_from_oblique"] = True
    return out
