"""Writing a 3D volume as a DICOM series, for viewers (PACS, OHIF) that cannot show NIfTI.

One CT Image Storage file per slice, uncompressed (Explicit VR Little Endian), with the geometry of the NIfTI
written from the same array and RAS affine: every voxel lies at the same point in patient space. DICOM counts in
LPS, so the affine is turned into LPS (x and y negated); its first array axis runs along the rows of a slice
(Columns = X), the second down the columns (Rows = Y), the third from slice to slice.

Values are stored as int16 with Rescale Slope/Intercept, chosen per series by :func:`int16_scaling`: the slope is a
power of two (2^-k HU, k >= 0, as fine as the value range allows, at most 2^-15) and the intercept a whole number,
so the stored value times the slope plus the intercept is exact in float32 and float64 alike, and every voxel comes
back within half a step of the value written: within 2^-8 HU (0.004) for the cascade's [-200, 200] HU window,
within 2^-4 HU (0.06) for anything inside -1024..3071 HU, exactly for whole numbers.

The series of one case (a CT and its uncertainty map) share a :class:`DicomStudy`: the patient, the study and the
frame of reference, so that viewers file them together and can overlay them. Made from the source radiographs'
headers, it files the new series into the radiographs' study; without sources it is a new study of an anonymous
patient.

Works with pydicom 2.4 (the MONAI Label app's) and 3.x (the project's).
"""

from __future__ import annotations

import datetime
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from custom.core.errors import InputError
from custom.core.io import atomic_dir

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MAX_LO = 64  # characters of a Long String (LO): Series Description, Manufacturer, Manufacturer Model Name...
MAX_ST = 1024  # characters of a Short Text (ST): Derivation Description
MAX_K = 15  # finest quantisation step 2^-15 HU; its Decimal String "3.0517578125e-05" is the 16 characters DS allows
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
# attributes copied from a source image so that a derived series files into the same patient and study
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)
OPTIONAL_KEYWORDS = ("StudyDescription",)  # the others are type 1 or 2 in the CT image: written even when empty
# purpose of reference in Source Image Sequence: the radiographs were the input of an image processing operation
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def _pydicom_major() -> int:
    import pydicom

    return int(str(pydicom.__version__).split(".")[0])


def fit_lo(*candidates: str) -> str:
    """The first candidate that fits a Long String (64 characters); the last one cut to 64 if none does.

    Series descriptions are LO: a viewer, or a strict archive, truncates or refuses longer ones, so callers offer
    a full wording and shorter fallbacks, most important words first."""
    if not candidates:
        raise ValueError("fit_lo needs at least one candidate")
    for text in candidates:
        if len(text) <= MAX_LO:
            return text
    return candidates[-1][:MAX_LO]


def bundle_software(bundle_root, default_name: str) -> tuple[str, str]:
    """(name, version) that identify a bundle in the DICOM headers it writes: the bundle folder's name and the
    version in its ``configs/metadata.json``; ``default_name`` and ``unknown`` when ``bundle_root`` is not a bundle."""
    import json

    if bundle_root:
        root = Path(str(bundle_root)).resolve()
        try:
            return root.name, str(json.loads((root / "configs" / "metadata.json").read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return default_name, "unknown"


def _ds(x: float) -> str:
    """A Decimal String (at most 16 characters) as close to ``x`` as 16 characters allow."""
    x = float(x)
    if abs(x) < 1e-12:  # cosines of 1e-17 from a rotation matrix are zero
        return "0"
    for digits in range(15, 0, -1):
        text = f"{x:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{x} cannot be written as a DICOM decimal string")


def int16_scaling(volume: np.ndarray) -> tuple[float, int]:
    """(slope, intercept) that store ``volume`` as int16: slope 2^-k with the largest k in [0, 15] for which the
    value range fits, intercept the whole number nearest the middle of the range.

    Stored values are ``round((v - intercept) / slope)``: a voxel comes back within ``slope / 2`` of ``v``.
    """
    lo, hi = float(np.min(volume)), float(np.max(volume))
    centre = int(round((lo + hi) / 2))
    half = max(hi - centre, centre - lo)
    k = MAX_K if half <= 0 else min(MAX_K, math.floor(math.log2(32767 / half)))
    if k < 0:
        raise InputError(
            f"values span [{lo:.6g}, {hi:.6g}], more than int16 holds at 1 unit per step; this is not a CT in HU"
        )
    return 2.0**-k, centre


@dataclass(frozen=True)
class DicomStudy:
    """Patient, study and frame of reference shared by the series written for one case.

    Attributes:
        attributes: patient and study attributes by DICOM keyword.
        frame_of_reference_uid: shared by every series of the case, so viewers can overlay them.
        sources: (SOP Class UID, SOP Instance UID) of the source images, for Source Image Sequence.
        copied: whether patient and study came from source images (False: a new study, anonymous patient).
    """

    attributes: dict
    frame_of_reference_uid: str
    sources: tuple = ()
    copied: bool = False

    @classmethod
    def new(cls) -> "DicomStudy":
        """A new study of an anonymous patient, with its own patient ID so that the cases of a run do not pile up
        under one patient in an archive."""
        from pydicom.uid import generate_uid

        now = datetime.datetime.now()
        attributes = {
            "PatientName": "ANONYMOUS",
            "PatientID": f"ANON-{uuid.uuid4().hex[:12].upper()}",
            "PatientBirthDate": "",
            "PatientSex": "",
            "StudyInstanceUID": generate_uid(),
            "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"),
            "AccessionNumber": "",
            "StudyID": "",
            "ReferringPhysicianName": "",
        }
        return cls(attributes, generate_uid(), (), False)

    @classmethod
    def from_sources(cls, sources: Sequence) -> "DicomStudy":
        """The study of the source images (pydicom datasets, or paths read header-only), or a new one when none
        of them is DICOM with a Study Instance UID.

        Patient and study come from the first source that has a study; every source with SOP Class and Instance
        UIDs is referenced. Sources of two different patients are refused: the derived series would be filed
        under one of them.
        """
        from pydicom.uid import generate_uid

        datasets = [_read_header(s) for s in sources or ()]
        datasets = [ds for ds in datasets if ds is not None]
        ids = {str(ds.PatientID) for ds in datasets if str(getattr(ds, "PatientID", "") or "")}
        if len(ids) > 1:
            raise InputError(
                f"the source images belong to different patients (Patient ID {', '.join(sorted(ids))}); a series "
                "derived from them cannot be filed under one patient. Give images of one patient, or write no DICOM"
            )
        refs = tuple(
            (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
            for ds in datasets
            if getattr(ds, "SOPClassUID", None) and getattr(ds, "SOPInstanceUID", None)
        )
        first = next((ds for ds in datasets if getattr(ds, "StudyInstanceUID", None)), None)
        if first is None:
            study = cls.new()
            return cls(study.attributes, study.frame_of_reference_uid, refs, False)
        attributes = {}
        for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
            value = getattr(first, keyword, None)
            if value is None and keyword in OPTIONAL_KEYWORDS:
                continue
            # as text: a name decoded from the source's character set is re-encoded in this series' UTF-8
            attributes[keyword] = "" if value is None else str(value)
        return cls(attributes, generate_uid(), refs, True)


def _read_header(source):
    """A pydicom dataset from a dataset or a path (header only); None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, pydicom.Dataset):
        return source
    try:
        return pydicom.dcmread(os.fspath(source), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return None


def dicom_header(path):
    """The header of ``path`` when it is a DICOM file (pixels not read), else None (NIfTI, PNG, a missing file)."""
    name = str(path).lower()
    if not path or name.endswith((".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")):
        return None
    return _read_header(path)


def _lps_geometry(affine, shape):
    """Image Orientation, first Image Position, spacing (x, y, z) and slice step of a RAS affine, in LPS."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    cols = lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if not np.all(np.isfinite(lps)) or np.any(spacing < 1e-9):
        raise ValueError(f"the affine is singular or not finite:\n{np.asarray(affine)}")
    unit = cols / spacing
    gram = unit.T @ unit
    if np.max(np.abs(gram - np.eye(3))) > 1e-4:
        # DICOM slices are planes stacked along their normal; a sheared grid has no such description
        raise ValueError(f"the affine's axes are not perpendicular (a sheared grid); DICOM cannot place it:\n{affine}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a volume of shape {tuple(shape)} is not 3D")
    return unit[:, 0], unit[:, 1], spacing, lps[:3, 2], lps[:3, 3]


def _save(ds, path) -> None:
    """Write ``ds`` as a DICOM file (preamble, file meta, Explicit VR Little Endian) with pydicom 2.4 or 3.x."""
    import pydicom

    if _pydicom_major() >= 3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:  # pydicom 2 takes the encoding from the dataset itself
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def _code_item(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_series(
    volume,
    affine,
    folder,
    study: DicomStudy,
    *,
    series_description: str,
    derivation_description: str,
    image_comments: str = "",
    series_number: int = 9001,
    rescale_type: str = "HU",
    image_type: Sequence[str] = ("DERIVED", "SECONDARY", "AXIAL"),
    window: Sequence[float] | None = None,
    manufacturer: str = "xray2ct-bundles",
    model_name: str = "",
    software_version: str = "",
    extra: dict | None = None,
) -> dict:
    """Write ``volume`` (X, Y, Z) with its RAS ``affine`` as a DICOM CT series in the folder ``folder``.

    The series is built in a temporary folder beside ``folder`` and renamed into place when every slice is
    written (an older ``folder`` is replaced): a crash never leaves half a series.

    Args:
        volume: the values (HU for a CT), any real dtype; NaN or infinity is refused.
        affine: the RAS affine of the NIfTI written from the same array (mm); its axes must be perpendicular.
        folder: the series folder to create, one file per slice, ``0001.dcm`` upwards along the third axis.
        study: patient, study and frame of reference (:meth:`DicomStudy.from_sources` or :meth:`DicomStudy.new`).
        series_description: at most 64 characters (:func:`fit_lo` picks among wordings).
        derivation_description: how the volume was made, at most 1024 characters.
        image_comments: free text shown by many viewers beside the image.
        series_number: Series Number (high by default, away from the numbers scanners give their series).
        rescale_type: what the rescaled values are: ``HU``, or ``US`` (unspecified) for values that are not a
            tissue's HU, such as a standard deviation.
        image_type: Image Type values (DERIVED, SECONDARY: computed, not acquired).
        window: (low, high) of the display window viewers open with; default the value range.
        manufacturer, model_name, software_version: General Equipment (who made the series).
        extra: further attributes by keyword, e.g. ``{"BodyPartExamined": "CHEST"}``.

    Returns:
        ``folder``, ``series_instance_uid``, ``sop_instance_uids``, ``files``, ``rescale_slope``,
        ``rescale_intercept`` and ``max_error`` (half the slope: the largest difference between a value written
        and the value read back).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    row_dir, col_dir, spacing, slice_step, origin = _lps_geometry(affine, vol.shape)
    if not np.all(np.isfinite(vol)):
        raise InputError(f"{folder}: the volume holds NaN or infinite values; DICOM stores none")
    for name, text, limit in (
        ("series_description", series_description, MAX_LO),
        ("manufacturer", manufacturer, MAX_LO),
        ("model_name", model_name, MAX_LO),
        ("derivation_description", derivation_description, MAX_ST),
    ):
        if len(text) > limit:
            raise ValueError(f"{name} has {len(text)} characters, more than DICOM's {limit}: {text!r}")
    slope, intercept = int16_scaling(vol)
    stored = np.clip(np.rint((vol - intercept) / slope), -32768, 32767).astype("<i2")
    lo, hi = (float(vol.min()), float(vol.max())) if window is None else (float(window[0]), float(window[1]))
    nx, ny, nz = vol.shape
    series_uid = generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names copied from any source character set survive
    base.SOPClassUID = CT_IMAGE_STORAGE
    base.InstanceCreationDate, base.InstanceCreationTime = date, time
    for keyword, value in study.attributes.items():
        setattr(base, keyword, value)
    base.Modality = "CT"
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = int(series_number)
    base.SeriesDescription = series_description
    base.SeriesDate, base.SeriesTime = date, time
    base.ContentDate, base.ContentTime = date, time
    base.PatientPosition = ""  # unknown: the volume was not acquired on a table
    base.FrameOfReferenceUID = study.frame_of_reference_uid
    base.PositionReferenceIndicator = ""
    base.Manufacturer = manufacturer
    base.ManufacturerModelName = model_name
    base.SoftwareVersions = software_version
    base.ImageType = list(image_type)
    base.DerivationDescription = derivation_description
    if image_comments:
        base.ImageComments = image_comments
    if study.sources:
        items = []
        for sop_class, sop_instance in study.sources:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(*SOURCE_PURPOSE)])
            items.append(item)
        base.SourceImageSequence = DicomSequence(items)
    base.BurnedInAnnotation = "NO"
    base.LossyImageCompression = "00"
    base.AcquisitionNumber = ""
    base.KVP = ""
    base.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    base.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
    base.SliceThickness = _ds(spacing[2])
    base.SpacingBetweenSlices = _ds(spacing[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = 1  # signed
    base.RescaleSlope, base.RescaleIntercept = _ds(slope), str(intercept)
    base.RescaleType = rescale_type
    base.WindowCenter, base.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1.0))
    for keyword, value in (extra or {}).items():
        setattr(base, keyword, value)

    normal = np.cross(row_dir, col_dir)
    sop_uids = []
    with atomic_dir(folder) as tmp:
        for k in range(nz):
            ds = Dataset()
            ds.update(base)
            sop_uid = generate_uid()
            sop_uids.append(sop_uid)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            position = origin + k * slice_step
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(position @ normal))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows = y, columns = x)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            _save(ds, Path(tmp) / f"{k + 1:04d}.dcm")
    return {
        "folder": str(folder),
        "series_instance_uid": series_uid,
        "sop_instance_uids": sop_uids,
        "files": nz,
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "max_error": slope / 2,
    }
