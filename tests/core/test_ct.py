"""CT loading: NIfTI and DICOM round trips in HU, header checks before pixel reading, clear InputErrors."""

import gzip
import shutil
import struct
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_dicom_series, write_nifti
from monai.data import MetaTensor

from custom.core.ct import AIR_HU, HU_MAX, HU_MIN, load_ct
from custom.core.errors import InputError


def ct_like(shape=(6, 7, 5), seed=0, lo=-1000, hi=1500):
    """Integer HU values with plenty of air, so check_hu accepts them."""
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_values_affine_shape(tmp_path):
    hu = ct_like((6, 7, 5))
    affine = np.array([[0.0, -0.7, 0.0, 12.0], [0.9, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 100.0], [0.0, 0.0, 0.0, 1.0]])
    path = write_nifti(tmp_path / "ct.nii.gz", hu, affine=affine)
    ct = load_ct(path)
    assert isinstance(ct, MetaTensor)
    assert ct.shape == (1, 6, 7, 5) and ct.dtype == torch.float32
    np.testing.assert_array_equal(ct[0].numpy(), hu)
    np.testing.assert_allclose(np.asarray(ct.affine), affine, atol=1e-6)
    assert ct.meta["filename_or_obj"] == str(path)
    assert ct.meta["space"] == "RAS"


def test_nifti_scl_slope_and_int16_storage(tmp_path):
    """Values stored as int16 with a slope/intercept come back in HU."""
    hu = ct_like((5, 5, 5), seed=1)
    img = nib.Nifti1Image(((hu + 1024) / 2).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    ct = load_ct(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(ct[0].numpy(), np.floor((hu + 1024) / 2) * 2 - 1024)


def test_nifti_4d_with_one_frame_is_accepted_and_uncompressed_nii(tmp_path):
    hu = ct_like((4, 5, 6), seed=2)
    path = write_nifti(tmp_path / "ct4d.nii", hu[..., None])
    ct = load_ct(path)
    assert ct.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(ct[0].numpy(), hu)


def test_padding_below_air_becomes_air_and_metal_is_clipped(tmp_path):
    hu = ct_like((6, 6, 6), seed=3)
    hu[0] = -2048.0  # outside the reconstruction circle
    hu[1, 0, 0] = -3024.0
    hu[1, 0, 1] = -1025.0  # anything below the 12-bit floor is fill, not tissue
    hu[1, 0, 2] = HU_MIN  # the floor itself is a measured value: kept
    hu[-1, -1, -1] = 3500.0  # extended-scale metal
    ct = load_ct(write_nifti(tmp_path / "pad.nii.gz", hu))
    v = ct[0].numpy()
    assert AIR_HU == -1000.0
    assert np.all(v[0] == AIR_HU) and v[1, 0, 0] == AIR_HU and v[1, 0, 1] == AIR_HU
    assert v[1, 0, 2] == HU_MIN
    assert v[-1, -1, -1] == HU_MAX
    assert v.min() >= -1024 and v.max() <= 3071
    np.testing.assert_array_equal(v[2:-1], hu[2:-1])


def _nifti2_claiming(path, dims):
    """A valid tiny NIfTI-2 file whose header is then edited to claim ``dims`` voxels (int64 dims at byte 16)."""
    nib.save(nib.Nifti2Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    assert struct.unpack_from("<8q", raw, 16)[:4] == (3, 2, 2, 2)
    struct.pack_into("<8q", raw, 16, len(dims), *dims, *([1] * (7 - len(dims))))
    path.write_bytes(bytes(raw))
    return path


def test_huge_header_is_rejected_before_reading_pixels(tmp_path):
    path = _nifti2_claiming(tmp_path / "huge.nii", (100_000, 100_000, 100_000))
    assert nib.load(str(path)).shape == (100_000, 100_000, 100_000)  # the edit took
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="voxels") as exc:
            load_ct(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "(100000, 100000, 100000)" in str(exc.value) and "1e+15" in str(exc.value)
    assert peak < 50 * 2**20, f"peak traced allocation {peak} bytes"


def test_huge_header_gzipped_nifti1(tmp_path):
    """NIfTI-1 (int16 dims) claiming 30000^3, compressed: rejected from the header alone as well."""
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    raw = bytearray((tmp_path / "a.nii").read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="voxels"):
        load_ct(tmp_path / "a.nii.gz")


def test_max_voxels_parameter(tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", ct_like((10, 10, 10)))
    with pytest.raises(InputError, match="1e\\+03 voxels"):
        load_ct(path, max_voxels=999)
    assert load_ct(path, max_voxels=1000).shape == (1, 10, 10, 10)


# ---------------------------------------------------------------------------------------------------------- DICOM


def test_dicom_round_trip_hu_spacing_and_ras_affine(tmp_path):
    hu = ct_like((6, 5, 4), seed=4)
    folder = write_dicom_series(tmp_path / "series", hu, spacing=(0.7, 0.9, 2.5))
    ct = load_ct(folder)
    assert isinstance(ct, MetaTensor) and ct.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(ct[0].numpy(), hu)  # stored + RescaleIntercept (-1024) gives HU back
    affine = np.asarray(ct.affine)
    # DICOM patient space is LPS: in RAS the x and y axes flip sign, z (superior) does not
    np.testing.assert_allclose(affine, np.diag([-0.7, -0.9, 2.5, 1.0]), atol=1e-6)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose([float(s) for s in ct.pixdim[:3]], [0.7, 0.9, 2.5], atol=1e-6)


def test_dicom_rescale_slope_and_intercept(tmp_path):
    hu = (ct_like((4, 4, 3), seed=5) // 2) * 2  # even values: exact with slope 2
    folder = write_dicom_series(tmp_path / "s", hu, slope=2.0, intercept=-2048.0)
    np.testing.assert_array_equal(load_ct(folder)[0].numpy(), hu)


def test_dicom_slices_sorted_by_position_and_origin(tmp_path):
    """Files in reverse spatial order: the volume is stacked inferior to superior, origin at the lowest slice."""
    hu = ct_like((4, 4, 5), seed=6)
    positions = [100.0 - 3.0 * k for k in range(5)]  # file 0000 is the most superior slice
    folder = write_dicom_series(tmp_path / "s", hu, spacing=(1.0, 1.0, 3.0), positions=positions)
    ct = load_ct(folder)
    np.testing.assert_array_equal(ct[0].numpy(), hu[:, :, ::-1])
    affine = np.asarray(ct.affine)
    np.testing.assert_allclose(affine[:3, 3], [0.0, 0.0, 88.0], atol=1e-6)
    np.testing.assert_allclose(affine[2, 2], 3.0, atol=1e-6)


def test_dicom_padding_value_becomes_air(tmp_path):
    hu = ct_like((5, 5, 3), seed=7)
    hu[0, :, :] = -2048.0
    folder = write_dicom_series(tmp_path / "s", hu, intercept=-3072.0)
    v = load_ct(folder)[0].numpy()
    assert np.all(v[0] == AIR_HU)
    np.testing.assert_array_equal(v[1:], hu[1:])


def _two_series(tmp_path):
    a = write_dicom_series(tmp_path / "a", ct_like((4, 4, 3), seed=8), series_uid="1.2.3.100")
    b = write_dicom_series(tmp_path / "b", ct_like((4, 4, 3), seed=9) + 7, series_uid="1.2.3.200")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in (a, b):
        for f in src.iterdir():
            shutil.copy(f, mixed / f"{src.name}_{f.name}")
    return mixed


def test_folder_with_two_series_lists_them_and_series_uid_picks_one(tmp_path):
    mixed = _two_series(tmp_path)
    with pytest.raises(InputError, match="2 DICOM series") as exc:
        load_ct(mixed)
    msg = str(exc.value)
    assert "1.2.3.100" in msg and "1.2.3.200" in msg and "series_uid" in msg
    assert "3 files" in msg
    a = load_ct(mixed, series_uid="1.2.3.100")
    b = load_ct(mixed, series_uid="1.2.3.200")
    np.testing.assert_array_equal(a[0].numpy(), ct_like((4, 4, 3), seed=8))
    np.testing.assert_array_equal(b[0].numpy(), ct_like((4, 4, 3), seed=9) + 7)
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 9.9.9"):
        load_ct(mixed, series_uid="9.9.9")


def test_uneven_slice_spacing_is_rejected(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((4, 4, 5)), positions=[0, 2, 4, 8, 10])
    with pytest.raises(InputError, match="uneven spacing") as exc:
        load_ct(folder)
    assert "median 2.000 mm" in str(exc.value) and "4.000 mm" in str(exc.value)


def test_duplicate_slice_positions_are_rejected(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((4, 4, 4)), positions=[0, 2, 2, 4])
    with pytest.raises(InputError, match="share a position"):
        load_ct(folder)


def test_mr_series_is_rejected(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((4, 4, 3)), modality="MR")
    with pytest.raises(InputError, match="modality MR, not CT"):
        load_ct(folder)


def test_single_dicom_file_instead_of_folder(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((4, 4, 3)))
    with pytest.raises(InputError, match="single DICOM file; give the folder"):
        load_ct(folder / "0000.dcm")


def test_series_of_one_slice_is_rejected(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((4, 4, 1)))
    with pytest.raises(InputError, match="single slice"):
        load_ct(folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM image files"):
        load_ct(tmp_path / "empty")


def test_corrupt_dicom_pixel_data(tmp_path):
    folder = write_dicom_series(tmp_path / "s", ct_like((8, 8, 3)))
    f = folder / "0001.dcm"
    f.write_bytes(f.read_bytes()[:-60])  # header intact, pixel data cut short
    with pytest.raises(InputError, match="pixel data cannot be decoded"):
        load_ct(folder)


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load_ct(tmp_path / "nope.nii.gz")


def test_random_bytes_named_nifti(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(600))
    with pytest.raises(InputError, match="not a readable NIfTI file"):
        load_ct(path)


def test_truncated_nifti(tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", ct_like((16, 16, 16)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_ct(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "ct.npy"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="unsupported CT format.*nrrd.*mha"):
        load_ct(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels(tmp_path, bad):
    hu = ct_like((5, 5, 5))
    hu[1, 2, 3] = bad
    hu[0, 0, 0] = bad
    with pytest.raises(InputError, match="2 voxels are NaN or infinite"):
        load_ct(write_nifti(tmp_path / "ct.nii.gz", hu))


@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (0.0, 1.0)])
def test_already_normalized_volume(tmp_path, lo, hi):
    x = np.random.default_rng(0).uniform(lo, hi, (6, 6, 6))
    with pytest.raises(InputError, match="already normalized"):
        load_ct(write_nifti(tmp_path / "ct.nii.gz", x))


def test_values_far_outside_hu(tmp_path):
    x = np.random.default_rng(0).uniform(0, 60000, (6, 6, 6))
    with pytest.raises(InputError, match="far outside CT's -1024..3071 HU"):
        load_ct(write_nifti(tmp_path / "ct.nii.gz", x))


def test_raw_stored_values_without_negatives(tmp_path):
    x = ct_like((6, 6, 6)) + 1024  # stored values: intercept never applied
    with pytest.raises(InputError, match="no air or fat") as exc:
        load_ct(write_nifti(tmp_path / "ct.nii.gz", x))
    assert "Rescale Intercept" in str(exc.value)


def test_2d_nifti_is_not_a_ct(tmp_path):
    with pytest.raises(InputError, match="needs 3 dimensions") as exc:
        load_ct(write_nifti(tmp_path / "xray.nii.gz", ct_like((8, 8))))
    assert "use it as an X-ray" in str(exc.value)


def test_4d_nifti_with_frames_is_rejected(tmp_path):
    with pytest.raises(InputError, match="needs 3 dimensions"):
        load_ct(write_nifti(tmp_path / "ct.nii.gz", ct_like((4, 4, 4, 2))))


def test_singular_affine_is_rejected(tmp_path):
    """nibabel refuses to write a singular affine, so the sform rows (float32 at byte 280) are edited in place."""
    path = write_nifti(tmp_path / "ct.nii", ct_like((4, 4, 4)))
    raw = bytearray(path.read_bytes())
    assert struct.unpack_from("<12f", raw, 280) == (1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    struct.pack_into("<4f", raw, 312, 0, 0, 0, 0)  # srow_z = 0: the z axis has no extent
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="singular or NaN affine"):
        load_ct(path)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_an_oblique_ct_is_resampled_in_physical_space_where_it_lies(tmp_path):
    """A volume rotated 30 degrees about the body axis: the reader returns an axis-aligned grid on which the bright
    block sits at the same physical place (every command then treats it the same way)."""
    from custom.core.ct import is_oblique

    vol = np.full((40, 40, 30), -1000, np.int16)
    vol[10:30, 15:25, 5:25] = 400
    th = np.deg2rad(30)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) * 2.0
    affine[:3, 3] = [10.0, -5.0, 3.0]
    path = write_nifti(tmp_path / "oblique.nii.gz", vol, affine=affine, dtype=np.int16)
    ct = load_ct(path)
    assert is_oblique(affine) and not is_oblique(ct.affine) and ct.meta["resampled_from_oblique"]

    def centroid(data, aff):
        idx = np.argwhere(np.asarray(data) > 0).mean(axis=0)
        return (np.asarray(aff) @ np.append(idx, 1.0))[:3]

    np.testing.assert_allclose(centroid(ct[0], ct.affine), centroid(vol, affine), atol=1.0)  # within half a voxel
    assert float(ct.min()) == pytest.approx(-1024.0) and float(ct.max()) <= 400.0  # outside the volume: air
    upright = load_ct(write_nifti(tmp_path / "upright.nii.gz", vol, spacing=(2.0, 2.0, 2.0), dtype=np.int16))
    assert "resampled_from_oblique" not in upright.meta and torch.equal(upright[0], torch.as_tensor(vol).float())
