"""NRRD and MetaImage CTs through SimpleITK: the same volume as NIfTI and as NRRD/MHA/MHD reads back identically
(values, shape and RAS affine), fill values read as air, and bad headers are refused before any pixel is read."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_nifti

from custom.core.ct import AIR_HU, load_ct
from custom.core.errors import InputError

# Voxel axes that are not the patient axes in order: i runs to the patient's left, j to superior, k to anterior
# (a RAS affine with permuted and flipped columns), anisotropic spacing and an off-centre origin. A reader that
# mixes up LPS and RAS, or the (Z, Y, X) order of ITK arrays, reads this volume differently from NIfTI.
RAS_AFFINE = np.array(
    [
        [-0.8, 0.0, 0.0, 40.0],
        [0.0, 0.0, 2.5, -30.0],
        [0.0, 1.2, 0.0, -100.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def ct_volume(shape=(7, 6, 5), seed=0):
    """Integer HU, asymmetric along every axis (distinct values), with enough air for check_hu."""
    vol = np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)
    vol[0] = -1000
    return vol


def to_itk(vol: np.ndarray, ras_affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``vol`` (X, Y, Z) placed by the RAS affine (ITK wants LPS and (Z, Y, X) arrays)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


@pytest.mark.parametrize("name", ["ct.nrrd", "ct.nhdr", "ct.mha", "ct.mhd"])
def test_nrrd_and_metaimage_read_like_nifti(tmp_path, name):
    vol = ct_volume()
    reference = load_ct(write_nifti(tmp_path / "ct.nii.gz", vol, affine=RAS_AFFINE, dtype=np.int16))
    path = tmp_path / name
    sitk.WriteImage(to_itk(vol, RAS_AFFINE), str(path))
    ct = load_ct(path)
    assert ct.shape == reference.shape == (1, 7, 6, 5)
    np.testing.assert_array_equal(ct.numpy(), reference.numpy())
    np.testing.assert_allclose(np.asarray(ct.affine), np.asarray(reference.affine), atol=1e-5)
    assert nib.aff2axcodes(np.asarray(ct.affine)) == ("L", "S", "A")
    assert ct.meta["filename_or_obj"] == str(path)


def test_itk_own_nifti_and_nrrd_agree(tmp_path):
    """ITK writes one image as NIfTI (read here by nibabel) and as NRRD (read through ITK): two independent paths
    from ITK's LPS space, so a wrong LPS -> RAS turn in either reader shows up."""
    img = to_itk(ct_volume(seed=1), RAS_AFFINE)
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    a, b = load_ct(tmp_path / "a.nii.gz"), load_ct(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-4)
    np.testing.assert_allclose(np.asarray(b.affine), RAS_AFFINE, atol=1e-5)


@pytest.mark.parametrize("fill", [-3024, -2048, -1025])
def test_fill_outside_the_scan_field_reads_as_air(tmp_path, fill):
    vol = ct_volume(seed=2)
    vol[:, 0, :] = fill  # 3D Slicer's CTChest stores -3024 outside the reconstruction circle
    vol[0, 1, 0] = -1024  # the floor of the HU scale is a measured value: kept
    sitk.WriteImage(to_itk(vol, RAS_AFFINE), str(tmp_path / "ct.nrrd"))
    v = load_ct(tmp_path / "ct.nrrd")[0].numpy()
    assert np.all(v[:, 0, :] == AIR_HU) and AIR_HU == -1000.0
    assert v[0, 1, 0] == -1024.0
    np.testing.assert_array_equal(v[:, 1:, :][v[:, 1:, :] > -1024], vol[:, 1:, :][vol[:, 1:, :] > -1024])


def test_a_4d_file_with_one_frame_reads_as_3d(tmp_path):
    vol = ct_volume()
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0))[None], isVector=False)  # (T=1, Z, Y, X)
    sitk.WriteImage(img, str(tmp_path / "ct.mha"))
    ct = load_ct(tmp_path / "ct.mha")
    assert ct.shape == (1, 7, 6, 5)
    np.testing.assert_array_equal(ct[0].numpy(), vol)


def test_bad_nrrd_and_metaimage_files(tmp_path):
    garbage = tmp_path / "ct.nrrd"
    garbage.write_bytes(b"not an nrrd" * 10)
    with pytest.raises(InputError, match="not a readable NRRD/MetaImage file"):
        load_ct(garbage)

    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7), np.int16)), str(flat))
    with pytest.raises(InputError, match="needs 3 dimensions.*2D image"):
        load_ct(flat)

    rgb = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(InputError, match="3 values per voxel"):
        load_ct(rgb)

    sitk.WriteImage(to_itk(ct_volume(), RAS_AFFINE), str(tmp_path / "split.mhd"))
    (tmp_path / "split.raw").unlink()  # the header names a pixel data file that is gone
    with pytest.raises(InputError, match="pixel data cannot be read.*missing"):
        load_ct(tmp_path / "split.mhd")

    seg = tmp_path / "Segmentation.seg.nrrd"
    sitk.WriteImage(to_itk(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(seg))
    with pytest.raises(InputError, match="a 3D Slicer segmentation"):
        load_ct(seg)


def test_an_absurd_header_is_refused_before_reading_pixels(tmp_path):
    path = tmp_path / "big.mha"
    sitk.WriteImage(to_itk(ct_volume(), RAS_AFFINE), str(path))
    with pytest.raises(InputError, match="more than the"):
        load_ct(path, max_voxels=100)
    # a header claiming 10^5 cubed voxels over a few bytes of data: refused from the header alone
    claim = tmp_path / "claim.mha"
    text = (
        path.read_bytes()
        .split(b"ElementDataFile = LOCAL\n")[0]
        .replace(b"DimSize = 7 6 5", b"DimSize = 100000 100000 100000")
    )
    claim.write_bytes(text + b"ElementDataFile = LOCAL\n" + b"\0" * 64)
    with pytest.raises(InputError, match="more than the"):
        load_ct(claim)
