"""Dataset preparation: case discovery, patient-level splits, resumable/sharded/parallel builds, failures."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli, write_dicom_series, write_nifti

from custom.core.errors import InputError
from custom.datasets.phantom import write_phantoms
from custom.datasets.prepare import assign_splits, find_cases, prepare_dataset

TINY = dict(size=16, detector_size=16, geometry="parallel", progress=False)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """Four 16^3 phantoms, written once for the module."""
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), count=4, size=16, seed=0, progress=False)


@pytest.fixture
def source(tmp_path, phantom_files):
    src = tmp_path / "src"
    src.mkdir()
    for p in phantom_files:
        shutil.copy(p, src / p.name)
    return src


def ct_like(shape, seed=0):
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.float32)


def read(path):
    return np.asarray(nib.load(str(path)).dataobj)


def case_ids(datalist):
    return sorted(c["case_id"] for s in ("training", "validation", "test") for c in datalist[s])


# ------------------------------------------------------------------------------------------------------ discovery


def test_find_cases_nifti_dicom_and_skipped_folders(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "a.nii.gz", ct_like((4, 4, 4)))
    (src / "P7").mkdir()
    write_nifti(src / "P7" / "scan 1.nii.gz", ct_like((4, 4, 4)))
    write_nifti(src / "P7" / "scan2.nii", ct_like((4, 4, 4)))
    (src / "labels").mkdir()
    write_nifti(src / "labels" / "a.nii.gz", np.zeros((4, 4, 4)))  # segmentation: skipped
    (src / ".cache").mkdir()
    write_nifti(src / ".cache" / "x.nii.gz", ct_like((4, 4, 4)))  # hidden: skipped
    (src / "notes.txt").write_text("not a CT")
    write_dicom_series(src / "dicom" / "PAT" / "series1", ct_like((4, 4, 3)), patient_id="DCM9", series_uid="1.2.3")
    write_dicom_series(src / "dicom" / "PAT" / "mr", ct_like((4, 4, 3)), modality="MR")  # not CT: skipped

    cases = find_cases(src)
    by_id = {c.case_id: c for c in cases}
    assert [c.case_id for c in cases] == sorted(by_id)  # sorted
    assert set(by_id) == {"a", "P7__scan__1", "P7__scan2", "dicom__PAT__series1"}
    assert by_id["a"].patient_id == "a" and by_id["a"].path == str(src / "a.nii.gz")
    assert by_id["P7__scan__1"].patient_id == "P7" and by_id["P7__scan2"].patient_id == "P7"
    dcm = by_id["dicom__PAT__series1"]
    assert dcm.patient_id == "DCM9"  # the DICOM PatientID wins over the folder name
    assert dcm.series_uid == "1.2.3" and dcm.path == str(src / "dicom" / "PAT" / "series1")
    assert all(c.series_uid is None for c in cases if c is not dcm)


def test_find_cases_two_series_in_one_folder(tmp_path):
    a = write_dicom_series(tmp_path / "a", ct_like((4, 4, 3)), series_uid="1.2.3.1")
    b = write_dicom_series(tmp_path / "b", ct_like((4, 4, 3), 1), series_uid="1.2.3.2")
    mixed = tmp_path / "src" / "mixed"
    mixed.mkdir(parents=True)
    for d in (a, b):
        for f in d.iterdir():
            shutil.copy(f, mixed / f"{d.name}{f.name}")
    cases = find_cases(tmp_path / "src")
    assert [(c.case_id, c.series_uid) for c in cases] == [("mixed__s0", "1.2.3.1"), ("mixed__s1", "1.2.3.2")]


def test_find_cases_single_file_and_errors(tmp_path):
    f = write_nifti(tmp_path / "one.nii.gz", ct_like((4, 4, 4)))
    assert [(c.case_id, c.patient_id, c.path) for c in find_cases(f)] == [("one", "one", str(f))]
    with pytest.raises(InputError, match="no such file or folder"):
        find_cases(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="give a CT file \\(NIfTI, NRRD or MetaImage\\) or a folder"):
        find_cases(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT files \\(NIfTI, NRRD, MetaImage\\) or CT DICOM series found"):
        find_cases(tmp_path / "empty")
    dup = tmp_path / "dup"
    dup.mkdir()
    write_nifti(dup / "a.nii.gz", ct_like((4, 4, 4)))
    write_nifti(dup / "a.nii", ct_like((4, 4, 4)))
    with pytest.raises(InputError, match="same case id"):
        find_cases(dup)


# --------------------------------------------------------------------------------------------------------- splits


def test_assign_splits_deterministic_patient_level_fractions():
    patients = [f"P{i:02d}" for i in range(20)] * 3  # three scans per patient
    a = assign_splits(patients, seed=3, val_fraction=0.1, test_fraction=0.2)
    assert a == assign_splits(list(reversed(patients)), seed=3, val_fraction=0.1, test_fraction=0.2)
    assert set(a) == set(patients)  # one split per patient: no patient in two splits
    counts = {s: sum(v == s for v in a.values()) for s in ("training", "validation", "test")}
    assert counts == {"training": 14, "validation": 2, "test": 4}
    others = [assign_splits(patients, seed=s, val_fraction=0.1, test_fraction=0.2) for s in range(4, 8)]
    assert any(o != a for o in others)  # the seed matters


def test_assign_splits_small_collections_keep_a_training_patient():
    assert set(assign_splits(["a", "b"], 0, 0.1, 0.1).values()) == {"training"}
    two = assign_splits(["a", "b"], 0, 0.4, 0.4)
    assert sorted(two.values()) == ["test", "training"]
    assert assign_splits(["only"], 0, 0.3, 0.3) == {"only": "training"}
    with pytest.raises(InputError, match="below 1"):
        assign_splits(["a", "b"], 0, 0.5, 0.5)


# ------------------------------------------------------------------------------------------------------- building


def test_prepare_dataset_writes_cases_and_datalist_then_skips(source, tmp_path):
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, test_fraction=0.25, val_fraction=0.25, **TINY)
    assert summary["cases"] == 4 and summary["built"] == 4 and summary["failed"] == {}
    assert summary["split_counts"] == {"training": 2, "validation": 1, "test": 1}
    assert summary["datalist"] == str(out / "datalist.json")
    datalist = json.loads((out / "datalist.json").read_text())
    assert case_ids(datalist) == [f"phantom_{i:05d}" for i in range(4)]
    assert datalist["settings"]["size"] == 16 and datalist["settings"]["ct_units"] == "HU"
    for split in ("training", "validation", "test"):
        for case in datalist[split]:
            for key in ("ct", "frontal", "lateral"):
                assert not Path(case[key]).is_absolute()
                assert (out / case[key]).is_file()
    case = out / "cases" / "phantom_00002"
    assert sorted(p.name for p in case.iterdir()) == [
        "case.json",
        "ct.nii.gz",
        "frontal.nii.gz",
        "lateral.nii.gz",
        "preview.png",
    ]
    ct = nib.load(str(case / "ct.nii.gz"))
    assert ct.shape == (16, 16, 16) and ct.get_data_dtype() == np.int16
    np.testing.assert_allclose(ct.header.get_zooms(), [20.0] * 3)
    np.testing.assert_array_equal(read(case / "ct.nii.gz"), read(source / "phantom_00002.nii.gz"))  # on the grid
    drr = nib.load(str(case / "frontal.nii.gz"))
    assert drr.shape == (16, 16) and drr.header.get_zooms() == (20.0, 20.0)
    assert read(case / "frontal.nii.gz").min() >= 0 and read(case / "frontal.nii.gz").max() > 1
    meta = json.loads((case / "case.json").read_text())
    assert meta["case_id"] == "phantom_00002" and meta["source_shape"] == [16, 16, 16]
    assert meta["settings"]["geometry"]["detector_pixels"] == 16
    assert [p.name for p in (out / "cases").iterdir() if p.name.startswith(".")] == []  # no temporary folders

    mtime = (case / "ct.nii.gz").stat().st_mtime_ns
    again = prepare_dataset(source, out, test_fraction=0.25, val_fraction=0.25, **TINY)
    assert again["built"] == 0 and again["skipped_done"] == 4
    assert (case / "ct.nii.gz").stat().st_mtime_ns == mtime
    assert json.loads((out / "datalist.json").read_text()) == datalist

    # other settings: every case is rebuilt
    changed = prepare_dataset(source, out, **{**TINY, "detector_size": 8})
    assert changed["built"] == 4
    assert nib.load(str(case / "frontal.nii.gz")).shape == (8, 8)


def test_resume_after_a_crash(source, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(source, out, **TINY)
    reference = read(out / "cases" / "phantom_00001" / "frontal.nii.gz")
    # what a killed run leaves: a hidden half-built folder, and (older layout) a case folder without case.json
    stale = out / "cases" / ".phantom_00003.x.tmp"
    stale.mkdir()
    (stale / "ct.nii.gz").write_bytes(b"half")
    (out / "cases" / "phantom_00001" / "case.json").unlink()
    (out / "cases" / "phantom_00001" / "frontal.nii.gz").write_bytes(b"garbage")
    (out / "datalist.json").unlink()

    summary = prepare_dataset(source, out, **TINY)
    assert summary["built"] == 1 and summary["skipped_done"] == 3 and summary["failed"] == {}
    rebuilt = out / "cases" / "phantom_00001"
    assert (rebuilt / "case.json").is_file()
    np.testing.assert_array_equal(read(rebuilt / "frontal.nii.gz"), reference)
    datalist = json.loads((out / "datalist.json").read_text())
    assert case_ids(datalist) == [f"phantom_{i:05d}" for i in range(4)]
    assert ".phantom_00003.x.tmp" not in json.dumps(datalist)


def test_a_killed_prepare_leaves_nothing_the_next_run_keeps(tmp_path):
    """SIGKILL (what the out-of-memory killer sends) in the middle of a case leaves its hidden temporary folder; the
    next run removes it and builds the case."""
    import os
    import subprocess
    import sys
    import time

    from conftest import ROOT

    src, out = tmp_path / "src", tmp_path / "out"
    write_phantoms(src, count=1, size=64, seed=3, progress=False)
    cmd = [sys.executable, "-m", "custom", "prepare", src, out, "--size", 192, "--geometry", "parallel"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "cases").glob(".phantom_00003.*")) and time.monotonic() < deadline:
            assert proc.poll() is None, "prepare finished before it could be killed"
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert list((out / "cases").glob(".phantom_00003.*")), "the kill left no temporary folder to clean up"

    r = run_cli("prepare", src, out, "--size", 16, "--geometry", "parallel")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["phantom_00003"]
    assert not [p for p in out.rglob(".*")]


def test_prepared_cases_get_the_permissions_of_the_umask(source, tmp_path):
    """Cases are built in a temporary folder (mode 0700) and renamed: they must end up as any new folder would."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        r = run_cli("prepare", source, tmp_path / "out", "--size", 16, "--geometry", "parallel")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr[-2000:]
    case = tmp_path / "out" / "cases" / "phantom_00000"
    assert stat.S_IMODE(case.stat().st_mode) == 0o750
    for f in case.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_shards_write_the_datalist_once_all_cases_exist(source, tmp_path):
    out = tmp_path / "out"
    first = prepare_dataset(source, out, shard="0/2", **TINY)
    assert first["this_shard"] == 2 and first["built"] == 2
    assert first["missing_other_shards"] == ["phantom_00001", "phantom_00003"]
    assert first["datalist"] is None and not (out / "datalist.json").exists()
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["phantom_00000", "phantom_00002"]
    merged_early = prepare_dataset(source, out, shard="0/2", merge=True, **TINY)
    assert merged_early["built"] == 0 and merged_early["datalist"] is None

    second = prepare_dataset(source, out, shard=(1, 2), **TINY)
    assert second["built"] == 2 and second["missing_other_shards"] == []
    assert second["datalist"] == str(out / "datalist.json")
    assert case_ids(json.loads((out / "datalist.json").read_text())) == [f"phantom_{i:05d}" for i in range(4)]
    (out / "datalist.json").unlink()
    merged = prepare_dataset(source, out, merge=True, **TINY)
    assert merged["built"] == 0 and (out / "datalist.json").is_file()


def test_parallel_workers_and_reruns_give_identical_outputs(source, tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    again = tmp_path / "again"
    assert prepare_dataset(source, one, num_workers=1, **TINY)["built"] == 4
    assert prepare_dataset(source, two, num_workers=2, **TINY)["built"] == 4
    assert prepare_dataset(source, again, num_workers=1, **TINY)["built"] == 4
    for i in range(4):
        case = f"cases/phantom_{i:05d}"
        a, b = read(one / case / "ct.nii.gz"), read(two / case / "ct.nii.gz")
        assert a.dtype == b.dtype == np.int16 and a.tobytes() == b.tobytes()
        for view in ("frontal", "lateral"):
            x = read(one / case / f"{view}.nii.gz")
            np.testing.assert_allclose(read(two / case / f"{view}.nii.gz"), x, rtol=1e-6, atol=1e-6)
            assert read(again / case / f"{view}.nii.gz").tobytes() == x.tobytes()  # deterministic
    assert json.loads((one / "datalist.json").read_text()) == json.loads((two / "datalist.json").read_text())


def test_a_bad_case_is_reported_and_the_others_succeed(source, tmp_path):
    bad = ct_like((8, 8, 8))
    bad[1, 1, 1] = np.nan
    write_nifti(source / "broken.nii.gz", bad)
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, **TINY)
    assert list(summary["failed"]) == ["broken"]
    assert "NaN" in summary["failed"]["broken"]
    assert summary["built"] == 4 and summary["missing_other_shards"] == []
    assert json.loads((out / "failed.shard-0-of-1.json").read_text()) == summary["failed"]
    assert not (out / "cases" / "broken").exists()
    assert [p.name for p in (out / "cases").iterdir() if p.name.startswith(".")] == []
    datalist = json.loads((out / "datalist.json").read_text())
    assert case_ids(datalist) == [f"phantom_{i:05d}" for i in range(4)]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"split": "train"}, "split must be"),
        ({"num_workers": 0}, "num_workers must be >= 1"),
        ({"shard": "2/2"}, "0 <= I < N"),
        ({"shard": "half"}, "shard must look like I/N"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "below 1"),
    ],
)
def test_prepare_dataset_bad_settings(source, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        prepare_dataset(source, tmp_path / "out", **{**TINY, **kwargs})
    with pytest.raises(InputError, match="give an output folder"):
        prepare_dataset(source, "", **TINY)


def test_split_setting_puts_every_case_in_one_split(source, tmp_path):
    summary = prepare_dataset(source, tmp_path / "out", split="validation", **TINY)
    assert summary["split_counts"] == {"training": 0, "validation": 4, "test": 0}


def test_a_ct_covering_little_of_the_detector_is_prepared_with_a_warning(tmp_path):
    """20 slices of 2 mm (40 mm of body) where the detector sees about 285 mm: most of each DRR is empty."""
    src = tmp_path / "src"
    src.mkdir()
    vol = np.full((64, 64, 20), -1000, np.int16)
    vol[16:48, 16:48, :] = 40
    write_nifti(src / "short.nii.gz", vol, spacing=(5.0, 5.0, 2.0), dtype=np.int16)
    proc = run_cli("prepare", src, tmp_path / "out", "--size", 32, "--split", "test")
    assert proc.returncode == 0, proc.stderr
    assert "warning: short" in proc.stderr and "of each DRR shows no body" in proc.stderr
    record = json.loads((tmp_path / "out" / "cases" / "short" / "case.json").read_text())
    assert len(record["warnings"]) == 1 and "40 mm" in record["warnings"][0]
    drr = run_cli("drr", src / "short.nii.gz", tmp_path / "drr", "--size", 32)
    assert drr.returncode == 0 and "warning:" in drr.stderr and "covers 40 mm" in drr.stderr


def test_an_oblique_ct_is_prepared_on_its_resampled_upright_grid(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    vol = np.full((48, 48, 48), -1000, np.int16)
    vol[12:36, 12:36, 8:40] = 40
    th = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]]) * 6.0
    write_nifti(src / "tilted.nii.gz", vol, affine=affine, dtype=np.int16)
    summary = prepare_dataset(src, tmp_path / "out", size=32, split="test", progress=False)
    assert not summary["failed"]
    record = json.loads((tmp_path / "out" / "cases" / "tilted" / "case.json").read_text())
    assert record["resampled_from_oblique"] is True
