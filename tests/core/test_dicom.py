"""Writing volumes as DICOM CT series: read back by SimpleITK and by pydicom, they match the NIfTI written from the
same array and affine (voxels within the stated quantisation, origin, spacing, direction); UIDs, study and patient
attributes; no half-written series after a failure."""

import re
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from custom.core import dicom
from custom.core.dicom import DicomStudy, fit_lo, int16_scaling, write_series
from custom.core.errors import InputError
from custom.core.io import save_nifti

sitk = pytest.importorskip("SimpleITK")

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS: negate x and y


def _affine(rotation_deg, spacing, origin):
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "oblique_anisotropic": _affine([20, -35, 50], [0.7, 0.9, 2.5], [10.0, -20.0, 30.0]),
    "axis_aligned": _affine([0, 0, 0], [5.0, 5.0, 5.0], [-157.5, -157.5, -157.5]),
    # a negative x step (LAS, left-handed): the slices' normal points against the third axis
    "left_handed": np.diag([-0.8, 0.8, 1.5, 1.0]) + np.array([[0, 0, 0, 40.0], [0, 0, 0, -12], [0, 0, 0, 7], [0] * 4]),
}


def _read_sitk(folder):
    """(array (X, Y, Z), RAS affine) through SimpleITK's GDCM series reader, which orders slices itself."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float64), LPS @ lps


def _read_pydicom(folder):
    """(array (X, Y, Z), RAS affine) from the headers and pixels alone: slices sorted along their normal."""
    slices = [pydicom.dcmread(str(p)) for p in sorted(folder.glob("*.dcm"))]
    row, col = (np.array(slices[0].ImageOrientationPatient, dtype=float).reshape(2, 3)[i] for i in (0, 1))
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=float)
    vol = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices], axis=-1
    ).transpose(1, 0, 2)
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * dx, col * dy
    lps[:3, 2] = (positions[-1] - positions[0]) / max(len(slices) - 1, 1)
    lps[:3, 3] = positions[0]
    return vol, LPS @ lps


def _on_grid(array, affine, ref_affine, ref_shape):
    """``array`` (with ``affine``) indexed on the voxel grid of ``ref_affine``: a reader may order the axes or the
    slices differently, but every voxel must lie at the same point, so the index map is a signed permutation."""
    m = np.linalg.inv(affine) @ ref_affine
    assert np.allclose(m, np.round(m), atol=1e-4), f"the grids do not coincide:\n{m}"
    m = np.round(m).astype(int)
    idx = np.indices(ref_shape).reshape(3, -1)
    src = m[:3, :3] @ idx + m[:3, 3:4]
    assert (src >= 0).all() and (src < np.array(array.shape)[:, None]).all()
    return array[tuple(src)].reshape(ref_shape)


@pytest.mark.parametrize("kind", list(AFFINES))
def test_series_reads_back_like_the_nifti_of_the_same_data(kind, tmp_path):
    affine = AFFINES[kind]
    hu = np.random.default_rng(0).uniform(-1000, 2000, (5, 6, 7)).astype(np.float32)  # not whole numbers
    save_nifti(hu, affine, tmp_path / "ct.nii.gz")
    nii = nib.load(str(tmp_path / "ct.nii.gz"))
    info = write_series(
        hu, affine, tmp_path / "ct_dicom", DicomStudy.new(), series_description="test", derivation_description="t"
    )
    assert info["files"] == 7 and len(list((tmp_path / "ct_dicom").iterdir())) == 7
    step = info["rescale_slope"]
    assert step == 2.0**-4 and info["max_error"] == step / 2  # [-1000, 2000] HU: 1/16 HU steps, within 1/32 HU
    for read in (_read_sitk, _read_pydicom):
        vol, ras = read(tmp_path / "ct_dicom")
        assert np.abs(_on_grid(vol, ras, nii.affine, nii.shape) - nii.get_fdata()).max() <= step / 2 + 1e-6, read
        # spacing and directions as the NIfTI's, up to the order of the axes
        assert np.allclose(sorted(np.linalg.norm(ras[:3, :3], axis=0)), sorted(nii.header.get_zooms()), atol=1e-5)
    if kind == "axis_aligned":  # same axis order: origin, spacing and direction compare one to one
        img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "ct_dicom")))
        assert np.allclose(img.GetOrigin(), (LPS @ affine)[:3, 3], atol=1e-4)
        assert np.allclose(img.GetSpacing(), nii.header.get_zooms(), atol=1e-5)
        assert np.allclose(np.array(img.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]), atol=1e-6)
    # the project's own DICOM reader finds the same grid and values
    from custom.core.ct import read_dicom_ct

    vol, ras = read_dicom_ct(tmp_path / "ct_dicom")
    assert np.abs(_on_grid(vol, ras, nii.affine, nii.shape) - hu).max() <= step / 2 + 1e-4


def test_quantisation_is_a_power_of_two_within_half_a_step(tmp_path):
    assert int16_scaling(np.array([-200.0, 200.0])) == (2.0**-7, 0)  # the cascade's window: within 1/256 HU
    assert int16_scaling(np.array([-1024.0, 3071.0])) == (2.0**-3, 1024)  # any CT: within 1/16 HU
    assert int16_scaling(np.array([0.0, 150.0])) == (2.0**-8, 75)  # an uncertainty map
    assert int16_scaling(np.full(3, 7.25)) == (2.0**-15, 7)
    whole = np.random.default_rng(1).integers(-1024, 3072, (4, 4, 3)).astype(np.float32)
    write_series(whole, np.eye(4), tmp_path / "s", DicomStudy.new(), series_description="d", derivation_description="")
    vol, _ = _read_pydicom(tmp_path / "s")
    assert np.array_equal(vol, whole)  # whole numbers come back exactly
    with pytest.raises(InputError, match="int16"):
        int16_scaling(np.array([-1e5, 1e5]))
    with pytest.raises(InputError, match="NaN"):
        write_series(
            np.full((2, 2, 2), np.nan),
            np.eye(4),
            tmp_path / "n",
            DicomStudy.new(),
            series_description="",
            derivation_description="",
        )
    sheared = np.eye(4)
    sheared[0, 2] = 0.5
    with pytest.raises(ValueError, match="perpendicular"):
        write_series(whole, sheared, tmp_path / "x", DicomStudy.new(), series_description="", derivation_description="")


def _uid_ok(uid):
    return len(uid) <= 64 and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", uid) is not None


def test_uids_are_new_and_valid_and_the_frame_of_reference_is_shared(tmp_path):
    study = DicomStudy.new()
    vol = np.random.default_rng(2).uniform(-200, 200, (4, 5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns about values DICOM does not allow (too long, bad format)
        ct = write_series(
            vol,
            np.eye(4),
            tmp_path / "ct",
            study,
            series_description=fit_lo("x" * 70, "CT - NOT FOR DIAGNOSTIC USE"),
            derivation_description="made by a test",
            window=(-200, 200),
        )
        unc = write_series(
            np.abs(vol) / 4,
            np.eye(4),
            tmp_path / "unc",
            study,
            series_description="SD in HU",
            derivation_description="sd",
            rescale_type="US",
            series_number=9002,
        )
    other = write_series(
        vol, np.eye(4), tmp_path / "o", DicomStudy.new(), series_description="", derivation_description=""
    )
    a, b, c = (pydicom.dcmread(str(p / "0001.dcm")) for p in (tmp_path / "ct", tmp_path / "unc", tmp_path / "o"))
    sops = ct["sop_instance_uids"] + unc["sop_instance_uids"] + other["sop_instance_uids"]
    uids = sops + [ct["series_instance_uid"], unc["series_instance_uid"], other["series_instance_uid"]]
    uids += [a.StudyInstanceUID, b.StudyInstanceUID, c.StudyInstanceUID]
    uids += [a.FrameOfReferenceUID, b.FrameOfReferenceUID, c.FrameOfReferenceUID]
    assert all(_uid_ok(u) for u in uids) and len(set(uids)) == len(uids) - 2  # CT and uncertainty share two
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.StudyInstanceUID != c.StudyInstanceUID
    assert a.SOPInstanceUID == a.file_meta.MediaStorageSOPInstanceUID == ct["sop_instance_uids"][0]
    assert a.SOPClassUID == dicom.CT_IMAGE_STORAGE and a.Modality == "CT" and a.RescaleType == "HU"
    assert list(a.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and a.BurnedInAnnotation == "NO"
    assert a.SeriesDescription == "CT - NOT FOR DIAGNOSTIC USE" and a.DerivationDescription == "made by a test"
    assert (float(a.WindowCenter), float(a.WindowWidth)) == (0.0, 400.0)
    assert b.RescaleType == "US" and b.SeriesNumber == 9002
    assert a.PatientName == "ANONYMOUS" and a.PatientID.startswith("ANON-") and a.PatientID != c.PatientID


def _source_radiograph(path, patient_id="P-0042", study_uid=None):
    """A DX radiograph as a clinic sends it: patient and study attributes, a Latin-1 name."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Müller^Anna", patient_id, "19600131", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240305", "101500", "ACC123", "S7"
    ds.ReferringPhysicianName = "Curie^Marie"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_study_and_patient_come_from_the_source_radiographs(tmp_path):
    frontal = _source_radiograph(tmp_path / "pa.dcm")
    study_uid = pydicom.dcmread(str(frontal)).StudyInstanceUID
    lateral = _source_radiograph(tmp_path / "lat.dcm", study_uid=study_uid)
    study = DicomStudy.from_sources([frontal, lateral, tmp_path / "missing.dcm"])
    assert study.copied
    write_series(
        np.zeros((3, 3, 2)), np.eye(4), tmp_path / "ct", study, series_description="", derivation_description=""
    )
    ct = pydicom.dcmread(str(tmp_path / "ct" / "0001.dcm"))
    src = pydicom.dcmread(str(frontal))
    for keyword in dicom.PATIENT_KEYWORDS + dicom.STUDY_KEYWORDS[:-1]:
        assert str(getattr(ct, keyword)) == str(getattr(src, keyword)), keyword
    assert str(ct.PatientName) == "Müller^Anna" and ct.SpecificCharacterSet == "ISO_IR 192"
    refs = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ct.SourceImageSequence]
    assert refs == [(d.SOPClassUID, d.SOPInstanceUID) for d in map(pydicom.dcmread, map(str, (frontal, lateral)))]
    assert ct.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ct.FrameOfReferenceUID != src.get("FrameOfReferenceUID")  # a new frame: radiographs have none in 3D

    with pytest.raises(InputError, match="different patients"):
        DicomStudy.from_sources([frontal, _source_radiograph(tmp_path / "other.dcm", patient_id="P-9")])
    (tmp_path / "x.nii.gz").write_bytes(b"not dicom")
    assert not DicomStudy.from_sources([tmp_path / "x.nii.gz"]).copied  # no DICOM source: a new, anonymous study


def test_a_failure_half_way_leaves_no_partial_series(tmp_path, monkeypatch):
    out = tmp_path / "ct_dicom"
    old = write_series(
        np.zeros((3, 3, 4)), np.eye(4), out, DicomStudy.new(), series_description="", derivation_description=""
    )
    save = dicom._save
    calls = []

    def failing(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        save(ds, path)

    monkeypatch.setattr(dicom, "_save", failing)
    with pytest.raises(OSError, match="disk full"):
        write_series(
            np.ones((3, 3, 6)), np.eye(4), out, DicomStudy.new(), series_description="", derivation_description=""
        )
    assert [p.name for p in tmp_path.iterdir()] == ["ct_dicom"]  # no temporary folder left beside it
    assert len(list(out.iterdir())) == 4  # the previous series, untouched
    assert pydicom.dcmread(str(out / "0001.dcm")).SeriesInstanceUID == old["series_instance_uid"]
    calls.clear()
    with pytest.raises(OSError):
        write_series(
            np.ones((3, 3, 6)),
            np.eye(4),
            tmp_path / "new",
            DicomStudy.new(),
            series_description="",
            derivation_description="",
        )
    assert not (tmp_path / "new").exists()


def test_descriptions_fit_dicom_lengths(tmp_path):
    assert fit_lo("a" * 65, "short") == "short" and fit_lo("a" * 70) == "a" * 64
    with pytest.raises(ValueError, match="64"):
        write_series(
            np.zeros((2, 2, 2)),
            np.eye(4),
            tmp_path / "s",
            DicomStudy.new(),
            series_description="d" * 65,
            derivation_description="",
        )
