"""The DICOM series writer under pydicom 2.4, the version the MONAI Label app's environment pins (the project's own
environment has pydicom 3, where tests/core/test_dicom.py covers the writer): the same files come out."""

import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
if int(pydicom.__version__.split(".")[0]) >= 3:
    pytest.skip("pydicom 3 here: tests/core/test_dicom.py covers the writer", allow_module_level=True)


def test_series_written_with_pydicom_2_reads_back_with_its_geometry(tmp_path):
    from custom.core.ct import read_dicom_ct
    from custom.core.dicom import DicomStudy, write_series

    theta = np.deg2rad(25)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    ) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    hu = np.random.default_rng(0).uniform(-200, 200, (5, 6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns about values DICOM does not allow
        info = write_series(
            hu, affine, tmp_path / "ct", DicomStudy.new(), series_description="d", derivation_description="t"
        )
    vol, ras = read_dicom_ct(tmp_path / "ct")
    assert np.allclose(ras, affine, atol=1e-6)
    assert np.abs(vol - hu).max() <= info["max_error"] + 1e-6
    ds = pydicom.dcmread(str(tmp_path / "ct" / "0001.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and ds.preamble == b"\0" * 128
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID and ds.PixelRepresentation == 1
