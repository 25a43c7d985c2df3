"""``prepare`` over real-world source folders: NRRD/MetaImage cases, symbolic links, segmentations kept out, every
skipped file reported with its reason, and the separable resampling equal to ``preprocess_ct``."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_cli, write_dicom_series, write_nifti
from monai.data import MetaTensor

from custom.core.transforms import preprocess_ct
from custom.datasets.prepare import find_cases, prepare_dataset, preprocess_ct_fast

TINY = dict(size=16, detector_size=16, geometry="parallel", progress=False)


def chest(shape=(24, 20, 12), seed=0):
    """A small body (soft tissue, some bone) in air: enough for check_hu and for a DRR to see something."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000, np.int16)
    vol[4:-4, 4:-4, 1:-1] = rng.integers(-100, 400, (shape[0] - 8, shape[1] - 8, shape[2] - 2))
    return vol


def write_itk(path, vol, spacing=(12.0, 12.0, 20.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def reasons(skipped):
    """{file name: reason} of a skipped list (``Skipped`` objects or the dicts of ``skipped.json``)."""
    items = [s if isinstance(s, dict) else s.to_dict() for s in skipped]
    return {os.path.basename(s["path"]): s["reason"] for s in items}


def test_nrrd_metaimage_cases_and_segmentations_kept_out(tmp_path):
    src = tmp_path / "src"
    (src / "slicer").mkdir(parents=True)
    write_itk(src / "slicer" / "CTChest.nrrd", chest())
    write_itk(src / "slicer" / "Segmentation.seg.nrrd", np.zeros((24, 20, 12), np.uint8))
    write_itk(src / "meta.mhd", chest(seed=1))  # + meta.raw: its pixel data, not a file of its own
    write_itk(src / "vol.mha", chest(seed=2))
    write_nifti(src / "lesion_mask.nii.gz", np.zeros((6, 6, 6)))
    (src / "README.txt").write_text("about these scans")
    skipped = []
    cases = find_cases(src, skipped)
    assert [(c.case_id, c.patient_id) for c in cases] == [
        ("meta", "meta"),
        ("slicer__CTChest", "slicer"),
        ("vol", "vol"),
    ]
    why = reasons(skipped)
    assert set(why) == {"Segmentation.seg.nrrd", "lesion_mask.nii.gz", "README.txt"}  # meta.raw is not listed
    assert "3D Slicer segmentation" in why["Segmentation.seg.nrrd"]
    assert "mask" in why["lesion_mask.nii.gz"]
    assert "not a CT file format" in why["README.txt"]

    summary = prepare_dataset(src, tmp_path / "out", split="test", **TINY)
    assert summary["built"] == 3 and not summary["failed"]
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == summary["skipped"]
    assert len(summary["skipped"]) == 3


def test_a_symlinked_case_folder_is_followed(tmp_path):
    store = tmp_path / "store"
    write_dicom_series(store / "P1" / "series", chest().astype(np.float32), patient_id="P1", spacing=(12, 12, 20))
    write_itk(store / "P2" / "ct.nrrd", chest(seed=3))
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(store / "P1", src / "P1")  # a collection assembled from links to where the scans live
    os.symlink(store / "P2" / "ct.nrrd", src / "p2.nrrd")
    os.symlink(".", src / "again")  # a link loop: the source itself again
    skipped = []
    cases = find_cases(src, skipped)
    assert [(c.case_id, c.patient_id) for c in cases] == [("P1__series", "P1"), ("p2", "p2")]
    assert cases[0].path == str(src / "P1" / "series")  # the path under the source, not the link's target
    loop = [s for s in skipped if s.path == str(src / "again")]
    assert len(loop) == 1 and "already scanned" in loop[0].reason

    proc = run_cli("prepare", src, tmp_path / "out", "--size", 16, "--geometry", "parallel", "--split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert sorted(c["case_id"] for c in datalist["test"]) == ["P1__series", "p2"]


def test_every_skipped_file_is_printed_and_listed_with_its_reason(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "good.nii.gz", chest().astype(np.float32), spacing=(12, 12, 20))
    bad = chest(seed=4).astype(np.float32)
    bad[3, 3, 3] = np.nan
    write_nifti(src / "broken.nii.gz", bad)
    (src / "notes.pdf").write_bytes(b"%PDF")
    (src / "labels").mkdir()
    write_nifti(src / "labels" / "good.nii.gz", np.zeros((4, 4, 4)))
    os.symlink(src / "gone.nii.gz", src / "dangling.nii.gz")
    write_dicom_series(src / "mr", chest().astype(np.float32), modality="MR", series_uid="1.2.9")

    out = tmp_path / "out"
    proc = run_cli("prepare", src, out, "--size", 16, "--geometry", "parallel", "--split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = json.loads((out / "skipped.json").read_text())
    why = reasons(listed)
    assert set(why) == {"broken.nii.gz", "notes.pdf", "labels", "dangling.nii.gz", "mr"}
    assert "NaN" in why["broken.nii.gz"]
    assert [s["case_id"] for s in listed if "case_id" in s] == ["broken"]
    assert "not a CT file format" in why["notes.pdf"]
    assert "labels or masks" in why["labels"]
    assert "broken symbolic link" in why["dangling.nii.gz"]
    assert "modality MR, not CT" in why["mr"]
    for s in listed:  # and each one is printed, with its reason
        assert s["reason"].splitlines()[0] in proc.stderr
    assert f"5 skipped, with the reasons: {out / 'skipped.json'}" in proc.stderr
    datalist = json.loads((out / "datalist.json").read_text())
    assert [c["case_id"] for c in datalist["test"]] == ["good"]

    # a second run over a clean source leaves no stale list behind
    clean = tmp_path / "clean"
    clean.mkdir()
    write_nifti(clean / "good.nii.gz", chest().astype(np.float32), spacing=(12, 12, 20))
    assert prepare_dataset(clean, out, split="test", **TINY)["skipped"] == []
    assert json.loads((out / "skipped.json").read_text()) == []


@pytest.mark.parametrize(
    "shape,spacing,flip,size,cube",
    [
        ((30, 26, 9), (1.3, 1.3, 5.0), False, 16, 32.0),  # larger than the cube in-plane, shorter along z
        ((20, 31, 14), (0.7, 2.1, 3.0), True, 24, 40.0),  # LPS-like stored orientation, padding and cropping
        ((12, 12, 12), (4.0, 4.0, 4.0), False, 8, 20.0),  # upsampling to the 1 mm grid, then area downsizing
    ],
)
def test_separable_resampling_equals_preprocess_ct(shape, spacing, flip, size, cube):
    hu = torch.as_tensor(np.random.default_rng(5).uniform(-1024, 2000, shape), dtype=torch.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-7.0, 3.0, -11.0]
    if flip:  # stored with the x and y axes reversed, as DICOM's LPS is: Orientation must bring it to RAS
        affine[:2] *= -1
    ct = MetaTensor(hu[None], affine=torch.as_tensor(affine))
    ref = preprocess_ct(ct, size, cube, 1.0)
    fast = preprocess_ct_fast(ct, size, cube, 1.0)
    assert fast.shape == ref.shape == (1, size, size, size)
    np.testing.assert_allclose(np.asarray(fast.affine), np.asarray(ref.affine), atol=1e-6)
    np.testing.assert_allclose(fast.numpy(), ref.numpy(), atol=0.02)  # HU; float32 rounding of the coordinates


def test_separable_resampling_leaves_oblique_and_on_grid_volumes_to_preprocess_ct():
    hu = torch.full((1, 8, 8, 8), -1000.0)
    on_grid = MetaTensor(hu, affine=torch.as_tensor(np.diag([2.5, 2.5, 2.5, 1.0])))
    np.testing.assert_array_equal(preprocess_ct_fast(on_grid, 8, 20.0).numpy(), preprocess_ct(on_grid, 8, 20.0).numpy())
    th = np.deg2rad(10)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    oblique = MetaTensor(hu.clone(), affine=torch.as_tensor(rot * 3.0 + np.diag([0, 0, 0, -2.0])))
    np.testing.assert_allclose(preprocess_ct_fast(oblique, 8, 20.0).numpy(), preprocess_ct(oblique, 8, 20.0).numpy())
