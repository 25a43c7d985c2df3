"""Crash-safe writers: temporary file next to the target, atomic rename, cleanup on failure, usual permissions."""

import json
import os
import stat

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from custom.core.io import atomic_path, save_json, save_nifti, save_png


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_renames_into_place_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same folder: the rename is atomic
        assert tmp.name.startswith(".out.nii.gz.") and tmp.name.endswith(".tmp.nii.gz")
        assert not target.exists()  # nothing visible until the block succeeds
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]


def test_failure_mid_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "data.json"
    save_json({"version": 1}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b'{"version": 2, "trunc')  # partial content
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == before
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"\x89PNG partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writer_that_fails_inside_save_leaves_no_temp_file(tmp_path):
    """A writer error (PIL cannot encode a 7-channel image) must not leave a hidden temporary file behind."""
    target = tmp_path / "preview.png"
    save_png(np.full((4, 5), 9, np.uint8), target)
    good = target.read_bytes()
    with pytest.raises(TypeError):
        save_png(np.zeros((4, 5, 7), np.uint8), target)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_written_files_have_normal_permissions_not_0600(tmp_path):
    expected = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600
    assert _umask() & 0o044 or expected != 0o600
    save_json({"a": 1}, tmp_path / "a.json")
    save_nifti(np.zeros((3, 3, 3)), np.eye(4), tmp_path / "a.nii.gz")
    save_png(np.zeros((4, 5), np.uint8), tmp_path / "a.png")
    with atomic_path(tmp_path / "raw.bin") as tmp:
        tmp.write_bytes(b"x")
    for name in ("a.json", "a.nii.gz", "a.png", "raw.bin"):
        mode = _mode(tmp_path / name)
        assert mode == expected, f"{name}: {oct(mode)}"


def test_save_json_round_trip(tmp_path):
    obj = {"training": [{"ct": "cases/a/ct.nii.gz"}], "n": 3, "x": 0.5}
    save_json(obj, tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text()) == obj
    assert (tmp_path / "d.json").read_text().endswith("}\n")


def test_save_nifti_values_affine_units_and_int16_rounding(tmp_path):
    arr = np.array([[[-1024.4, 0.6], [40.5, 3071.0]], [[-5000.0, 40000.0], [1.49, -1.51]]])
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 1], [0, 0, 0, 1]])
    save_nifti(arr, affine, tmp_path / "f.nii.gz", description="CT in HU")
    save_nifti(arr, affine, tmp_path / "i.nii.gz", dtype=np.int16)
    f, i = nib.load(str(tmp_path / "f.nii.gz")), nib.load(str(tmp_path / "i.nii.gz"))
    np.testing.assert_allclose(f.get_fdata(), arr.astype(np.float32))
    np.testing.assert_allclose(f.affine, affine)
    assert f.header.get_xyzt_units()[0] == "mm"
    assert f.header["descrip"].tobytes().rstrip(b"\0") == b"CT in HU"
    assert i.get_data_dtype() == np.int16
    np.testing.assert_array_equal(
        np.asarray(i.dataobj), np.array([[[-1024, 1], [40, 3071]], [[-5000, 32767], [1, -2]]])
    )


def test_save_png_grey_and_rgb(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    rgb = np.stack([grey, grey[::-1], grey], -1)
    save_png(grey, tmp_path / "g.png")
    save_png(rgb, tmp_path / "c.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grey)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "g.png"]
