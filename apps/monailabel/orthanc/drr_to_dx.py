"""Write a frontal and a lateral DRR (NIfTI, as ``python -m custom demo`` or ``drr`` make them) as two DX radiographs.

    python apps/monailabel/orthanc/drr_to_dx.py FRONTAL.nii.gz LATERAL.nii.gz OUT_DIR [--patient_id ID]
        [--monochrome1] [--no_view_position]

Writes ``OUT_DIR/pa.dcm`` and ``OUT_DIR/lat.dcm``, one series each in one new study, and prints the Study Instance
UID. They carry what a hospital radiograph carries and the app's DICOMweb flow reads: Modality DX, View Position
PA / LL (or, with ``--no_view_position``, only Patient Orientation), Pixel Spacing and Imager Pixel Spacing,
Photometric Interpretation (MONOCHROME2, or MONOCHROME1 with dense tissue dark), Patient ID and Name, Study
Instance UID. Demonstration data for Orthanc and the viewers, not a clinical image.

DRRs are small (64 px at 7.8 mm); each pixel becomes a block of pixels so that the spacing is under 1 mm, as on a
detector, and the image covers the same field. Values are the line integrals scaled to 0..4000 (12 bits).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
MAX_SPACING_MM = 1.0
MAX_STORED = 4000


def dx_dataset(nifti, view: str, study: dict, monochrome: str = "MONOCHROME2", view_position: bool = True):
    """A pydicom dataset of the 2D NIfTI DRR ``nifti`` as a DX radiograph of ``view`` (``frontal`` or ``lateral``).

    ``study``: ``uid``, ``patient_id`` and ``patient_name`` shared by the two views.
    """
    import nibabel as nib
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = nib.load(str(nifti))
    uv = np.asarray(img.dataobj, dtype=np.float64).squeeze()
    if uv.ndim != 2:
        raise ValueError(f"{nifti}: a DRR is a 2D image, got shape {img.shape}")
    spacing = float(img.header.get_zooms()[0])
    factor = max(1, math.ceil(spacing / MAX_SPACING_MM))
    rows_cols = np.kron(uv.T, np.ones((factor, factor)))  # NIfTI axes are (u, v) = (column, row)
    top = rows_cols.max() if rows_cols.max() > 0 else 1.0
    stored = np.rint(np.clip(rows_cols, 0, None) / top * MAX_STORED).astype(np.uint16)
    if monochrome == "MONOCHROME1":  # the same picture stored with dense tissue dark, as many CR systems do
        stored = (int(stored.max()) + int(stored.min()) - stored.astype(np.int32)).astype(np.uint16)
    pitch = f"{spacing / factor:.7g}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = study["patient_name"], study["patient_id"]
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study["uid"], study.get("date", ""), study.get("time", "")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.StudyDescription = "DRR demonstration"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1 if view == "frontal" else 2
    ds.SeriesDescription = "chest PA (DRR)" if view == "frontal" else "chest lateral (DRR)"
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    if view_position:
        ds.ViewPosition = "PA" if view == "frontal" else "LL"
    # directions of increasing column and row numbers: patient's left and feet (frontal), posterior and feet (lateral)
    ds.PatientOrientation = ["L", "F"] if view == "frontal" else ["P", "F"]
    ds.PixelSpacing = ds.ImagerPixelSpacing = [pitch, pitch]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, monochrome
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    return ds


def encode(ds) -> bytes:
    """The DICOM file of ``ds`` as bytes, with pydicom 2 (MONAI Label's) or 3 (the project's)."""
    import pydicom

    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except TypeError:  # pydicom 2 has no enforce_file_format
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()


def new_study(patient_id: str, patient_name: str = "") -> dict:
    import datetime

    from pydicom.uid import generate_uid

    now = datetime.datetime.now()
    return {
        "uid": generate_uid(),
        "patient_id": patient_id,
        "patient_name": patient_name or f"DEMO^{patient_id}",
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S"),
    }


def write_pair(frontal, lateral, out_dir, patient_id="DEMO-1", monochrome="MONOCHROME2", view_position=True) -> dict:
    """Write ``pa.dcm`` and ``lat.dcm`` into ``out_dir``; the study (``uid``...) and each file's series UID."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = new_study(patient_id)
    for view, nifti, name in (("frontal", frontal, "pa.dcm"), ("lateral", lateral, "lat.dcm")):
        ds = dx_dataset(nifti, view, study, monochrome, view_position)
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(encode(ds))
        tmp.replace(out_dir / name)
        study[view] = str(ds.SeriesInstanceUID)
    return study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frontal", help="frontal DRR (NIfTI)")
    parser.add_argument("lateral", help="lateral DRR (NIfTI)")
    parser.add_argument("out_dir", help="folder for pa.dcm and lat.dcm")
    parser.add_argument("--patient_id", default="DEMO-1")
    parser.add_argument("--monochrome1", action="store_true", help="store dense tissue dark (MONOCHROME1)")
    parser.add_argument("--no_view_position", action="store_true", help="write Patient Orientation only")
    args = parser.parse_args(argv)
    for path in (args.frontal, args.lateral):
        if not Path(path).is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    mono = "MONOCHROME1" if args.monochrome1 else "MONOCHROME2"
    try:
        study = write_pair(args.frontal, args.lateral, args.out_dir, args.patient_id, mono, not args.no_view_position)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    print(f"{out / 'pa.dcm'}: series {study['frontal']}", file=sys.stderr)
    print(f"{out / 'lat.dcm'}: series {study['lateral']}", file=sys.stderr)
    print(f"patient {study['patient_id']}, Study Instance UID (on stdout):", file=sys.stderr)
    print(study["uid"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
