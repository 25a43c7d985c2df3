"""The X-ray -> CT bundle on hospital-style DICOM radiographs: what the reader assumed is kept in ct.json, and a
pair that cannot be a frontal and a lateral view ends the bundle run with one readable line."""

import json

import nibabel as nib
import numpy as np
import pydicom
from conftest import ROOT, run_bundle, write_dx

SAMPLE = ROOT / "bundles" / "xray2ct_cascade_diffusion" / "sample"


def dicom_from_sample(view, path, position, spacing=True):
    """The bundle's sample DRR of ``view`` as a DX radiograph (dense tissue bright, 16 bit) with View Position."""
    img = nib.load(str(SAMPLE / f"{view}.nii.gz"))
    rows_cols = np.asarray(img.dataobj, dtype=np.float32).T  # DRRs are stored [u, v] = (column, row)
    pitch = float(img.header.get_zooms()[0])
    write_dx(path, np.round(rows_cols * 4000).astype(np.uint16), spacing=(pitch, pitch))
    ds = pydicom.dcmread(str(path))
    ds.ViewPosition = position
    if not spacing:
        del ds.ImagerPixelSpacing
    ds.save_as(str(path))
    return path


def test_a_radiograph_without_spacing_is_placed_as_a_cassette_and_the_warning_kept(tmp_path):
    frontal = dicom_from_sample("frontal", tmp_path / "pa.dcm", "PA", spacing=False)
    lateral = dicom_from_sample("lateral", tmp_path / "ll.dcm", "LL")
    out = tmp_path / "out"
    proc = run_bundle(
        "xray2ct_cascade_diffusion",
        "--frontal_path", frontal, "--lateral_path", lateral, "--output_dir", out,
        "--num_inference_steps", 2, "--num_samples", 1,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(next(out.rglob("ct.json")).read_text())["inputs"]
    assert record["frontal"]["view_position"] == "PA" and record["lateral"]["view_position"] == "LL"
    assert any("cassette" in w for w in record["warnings"]) and "43 cm" in record["frontal"]["warnings"]
    assert "ImagerPixelSpacing" in record["lateral"]["spacing"]


def test_two_frontal_radiographs_end_the_bundle_run_with_one_line(tmp_path):
    frontal = dicom_from_sample("frontal", tmp_path / "pa.dcm", "PA")
    other = dicom_from_sample("lateral", tmp_path / "pa2.dcm", "PA")
    proc = run_bundle(
        "xray2ct_cascade_diffusion",
        "--frontal_path", frontal, "--lateral_path", other, "--output_dir", tmp_path / "out",
        "--num_inference_steps", 2, "--num_samples", 1,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "View Position PA" in last and "lateral" in last
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("ct.nii.gz"))


def test_two_patients_into_one_folder_keep_their_own_results_and_nothing_is_replaced_silently(tmp_path):
    """Cases laid out as ``prepare`` does (``<case>/frontal.nii.gz``) get their folder's name; a second run onto an
    existing case is refused unless ``overwrite`` is set."""
    import shutil

    out = tmp_path / "out"
    for patient in ("patient_a", "patient_b"):
        (tmp_path / patient).mkdir()
        for view in ("frontal", "lateral"):
            shutil.copy(SAMPLE / f"{view}.nii.gz", tmp_path / patient / f"{view}.nii.gz")
    args = ("--output_dir", out, "--num_inference_steps", 1, "--num_samples", 1)

    def run(patient, *extra):
        files = (
            "--frontal_path",
            tmp_path / patient / "frontal.nii.gz",
            "--lateral_path",
            tmp_path / patient / "lateral.nii.gz",
        )
        return run_bundle("xray2ct_cascade_diffusion", *files, *args, *extra)

    assert run("patient_a").returncode == 0 and run("patient_b").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["patient_a", "patient_b"]
    before = (out / "patient_a" / "ct.nii.gz").stat().st_mtime_ns
    again = run("patient_a")
    assert again.returncode == 2 and "already holds the results" in again.stderr.strip().splitlines()[-1]
    assert (out / "patient_a" / "ct.nii.gz").stat().st_mtime_ns == before
    assert run("patient_a", "--overwrite", "true").returncode == 0
    assert (out / "patient_a" / "ct.nii.gz").stat().st_mtime_ns != before
