"""Every bundle demonstrates itself: ``inference.json`` with nothing but ``--bundle_root`` runs on the sample the
bundle ships, from any working directory, in the repository and from an exported zip; explicit inputs still win."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, run_cli
from PIL import Image

BUNDLES = ROOT / "bundles"
CASCADE, REFINER, MASK = "xray2ct_cascade_diffusion", "ct_detail_refinement", "mask_refiner_2d"
# the cascade's defaults (10 DDIM steps x 4 samples) take about 25 s on 2 CPU cores; the sampling schedule is not
# what these tests are about, so it runs shorter there (the other two bundles run with their true defaults)
FAST = {CASCADE: ["--num_inference_steps", 2, "--num_samples", 1], REFINER: [], MASK: []}
# the files each bundle's default run writes under its own output_dir, with their shapes
EXPECTED = {
    CASCADE: {
        "phantom_100000/ct.nii.gz": (64, 64, 64),
        "phantom_100000/uncertainty.nii.gz": (64, 64, 64),
        "phantom_100000/comparison.png": None,
        "phantom_100000/ct.json": None,
    },
    REFINER: {
        "inference_a/phantom_100000/refined.nii.gz": (64, 64, 64),
        "inference_a/phantom_100000/coarse.nii.gz": (16, 16, 16),
        "inference_a/phantom_100000/phantom_100000_comparison.png": None,
    },
    MASK: {"slice_100000_mask.png": (192, 128), "slice_100000_overlay.png": (192, 128, 3)},
}


def _copy_bundles(tmp_path, *names):
    """Copies of bundle folders side by side, as in the repository, without earlier outputs."""
    for name in names:
        shutil.copytree(BUNDLES / name, tmp_path / name, ignore=shutil.ignore_patterns("eval", "runs", "__pycache__"))
    return tmp_path / names[0]


def _isolated_env():
    """Installed third-party packages only: neither the repository nor an editable install of ``custom``."""
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _run(root, *args, configs=("inference.json",), cwd, env=None, flags=()):
    """``python -m monai.bundle run`` on ``root``'s configs, as a user types it, from ``cwd``."""
    files = [str(root / "configs" / c) for c in configs]
    config = files[0] if len(files) == 1 else json.dumps(files)
    cmd = [sys.executable, *flags, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", root, *args]
    env = env or dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _check_outputs(out_dir, expected):
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    for rel, shape in expected.items():
        path = out_dir / rel
        assert path.is_file(), f"{rel} not written; got {written}"
        if rel.endswith(".nii.gz"):
            img = nib.load(str(path))
            assert img.shape == shape and np.isfinite(img.get_fdata()).all(), rel
        elif rel.endswith(".png") and shape is not None:
            assert np.asarray(Image.open(path)).shape == shape, rel


def _elsewhere(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


@pytest.mark.parametrize("bundle", [MASK, REFINER])
def test_bundle_runs_on_its_sample_with_true_defaults(bundle, tmp_path):
    root = _copy_bundles(tmp_path, bundle)
    cwd = _elsewhere(tmp_path)
    _run(root, cwd=cwd)
    _check_outputs(root / "eval", EXPECTED[bundle])
    assert not list(cwd.iterdir()), "the default run wrote into the working directory"
    if bundle == MASK:
        mask = np.asarray(Image.open(root / "eval" / "slice_100000_mask.png"))
        assert set(np.unique(mask)) == {0, 255}  # a binary mask with a lesion in it


def test_cascade_runs_on_its_sample(tmp_path):
    root = _copy_bundles(tmp_path, CASCADE)
    cwd = _elsewhere(tmp_path)
    _run(root, *FAST[CASCADE], cwd=cwd)
    _check_outputs(root / "eval", EXPECTED[CASCADE])
    assert not list(cwd.iterdir())
    settings = json.loads((root / "eval" / "phantom_100000" / "ct.json").read_text())
    assert settings["num_inference_steps"] == 2 and settings["units"] == "HU"


def test_variant_b_refines_the_cascade_reconstruction_of_the_sample_xrays(tmp_path):
    """The refiner's sample carries the two X-rays: the detail refiner runs the frozen cascade (its neighbour) on
    them."""
    root = _copy_bundles(tmp_path, REFINER, CASCADE)
    sample = root / "sample" / "phantom_100000"
    args = ["--frontal_path", sample / "frontal.nii.gz", "--lateral_path", sample / "lateral.nii.gz"]
    args += ["--cascade_num_inference_steps", 2, "--cascade_num_samples", 1]
    _run(root, *args, configs=("inference.json", "inference_variant_b.json"), cwd=_elsewhere(tmp_path))
    case = root / "eval" / "inference_b" / "phantom_100000"
    for name in ("coarse.nii.gz", "refined.nii.gz"):
        assert nib.load(str(case / name)).shape == (64, 64, 64), name


@pytest.mark.parametrize("bundle", [CASCADE, REFINER, MASK])
def test_exported_bundle_runs_on_its_sample(bundle, tmp_path):
    proc = run_cli("export-bundle", BUNDLES / bundle, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    (archive,) = (tmp_path / "dist").glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        assert any(n.startswith(f"{bundle}/sample/") for n in zf.namelist()), "the sample is not exported"
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / bundle
    cwd = _elsewhere(tmp_path)
    # -S and the isolated environment: the code comes from the zip only, as on a machine without the repository
    _run(root, *FAST[bundle], cwd=cwd, env=_isolated_env(), flags=["-S"])
    _check_outputs(root / "eval", EXPECTED[bundle])
    assert not list(cwd.iterdir())


def _parse(bundle, key, configs=("inference.json",), **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser.get_parsed_content(key)


@pytest.fixture
def datalist_dir(tmp_path):
    """A prepared-style dataset folder with one test case (empty files: only the paths are looked at)."""
    (tmp_path / "cases" / "c1").mkdir(parents=True)
    entry = {"case_id": "c1"}
    for key in ("ct", "frontal", "lateral"):
        entry[key] = f"cases/c1/{key}.nii.gz"
        (tmp_path / entry[key]).touch()
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [entry]}))
    return tmp_path


def test_sample_is_only_the_fallback_cascade(datalist_dir):
    sample = BUNDLES / CASCADE / "sample"
    (default,) = _parse(CASCADE, "data")
    assert default["frontal"] == str(sample / "frontal.nii.gz") and default["lateral"] == str(sample / "lateral.nii.gz")
    files = _parse(CASCADE, "data", frontal_path="pa.dcm", lateral_path="lat.dcm")
    assert files == [{"frontal": "pa.dcm", "lateral": "lat.dcm"}]
    # one view alone is a request for files (and fails at loading), never a silent run on the sample
    assert _parse(CASCADE, "data", lateral_path="lat.dcm") == [{"frontal": "", "lateral": "lat.dcm"}]
    (item,) = _parse(CASCADE, "data", dataset_dir=str(datalist_dir))
    assert item["frontal"] == str(datalist_dir / "cases" / "c1" / "frontal.nii.gz")
    # a datalist given alone: its paths are relative to its own folder (MONAI's rule)
    (item,) = _parse(CASCADE, "data", datalist=str(datalist_dir / "datalist.json"))
    assert item["lateral"] == str(datalist_dir / "cases" / "c1" / "lateral.nii.gz")


def test_sample_is_only_the_fallback_refiner(datalist_dir):
    coarse = str(BUNDLES / REFINER / "sample" / "phantom_100000" / "coarse.nii.gz")
    assert _parse(REFINER, "data") == [{"coarse": coarse, "case_id": "phantom_100000"}]
    assert _parse(REFINER, "coarse_source") == "file"
    (item,) = _parse(REFINER, "data", coarse_path="my.nii.gz")
    assert item["coarse"] == "my.nii.gz" and "frontal" not in item
    # X-rays alone: no sample coarse CT slips in; the cascade (detail) or the check (super_resolution_16to64) takes over
    xrays = {"frontal_path": "f.nii.gz", "lateral_path": "l.nii.gz"}
    assert _parse(REFINER, "coarse_path", **xrays) == ""
    assert _parse(REFINER, "coarse_source", ("inference.json", "inference_variant_b.json"), **xrays) == "cascade"
    assert _parse(REFINER, "coarse_path", lateral_path="l.nii.gz") == ""
    for where in ({"dataset_dir": str(datalist_dir)}, {"datalist": str(datalist_dir / "datalist.json")}):
        assert _parse(REFINER, "coarse_path", **where) == ""
        (item,) = _parse(REFINER, "data", **where)
        assert item["ct"] == str(datalist_dir / "cases" / "c1" / "ct.nii.gz")
        assert _parse(REFINER, "coarse_source", **where) == "degrade"


def test_sample_is_only_the_fallback_mask_refiner():
    sample = BUNDLES / MASK / "sample"
    (default,) = _parse(MASK, "data")
    assert default == {
        "image": str(sample / "slice_100000.png"),
        "probabilities": str(sample / "slice_100000_probabilities.npy"),
    }
    given = _parse(MASK, "data", image_path="a.png", probabilities_path="a.npy")
    assert given == [{"image": "a.png", "probabilities": "a.npy"}]
    assert _parse(MASK, "data", image_path="a.png") == [{"image": "a.png", "probabilities": ""}]


def test_samples_are_small_and_match_the_bundles_inputs():
    for bundle in (CASCADE, REFINER, MASK):
        files = [p for p in (BUNDLES / bundle / "sample").rglob("*") if p.is_file()]
        assert files and all(p.stat().st_size < 64 * 1024 for p in files), bundle
    for root in (BUNDLES / CASCADE / "sample", BUNDLES / REFINER / "sample" / "phantom_100000"):
        for view in ("frontal", "lateral"):
            assert nib.load(str(root / f"{view}.nii.gz")).shape == (64, 64)  # xray_size of both bundles
    image = np.asarray(Image.open(BUNDLES / MASK / "sample" / "slice_100000.png"))
    probabilities = np.load(BUNDLES / MASK / "sample" / "slice_100000_probabilities.npy")
    assert image.shape == probabilities.shape and 0 <= probabilities.min() and probabilities.max() <= 1


def _clinical_dicom(path, pixels_rows_cols, spacing, study_uid, patient_id="P-0042"):
    """A DX image as a clinic sends it: patient and study attributes beside the pixels."""
    from conftest import write_dx
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    write_dx(path, pixels_rows_cols, spacing=spacing)
    ds = dcmread(str(path))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", patient_id, "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240305", "101500", "ACC123", "S7"
    ds.ReferringPhysicianName = "Curie^Marie"
    ds.save_as(str(path))
    return path


def test_cascade_writes_dicom_series_into_the_study_of_dicom_radiographs(tmp_path):
    """The sample's two X-rays sent as DICOM: ct_dicom/ reads back as ct.nii.gz, in the radiographs' study."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from custom.core.ct import read_dicom_ct

    root = _copy_bundles(tmp_path, CASCADE)
    study_uid = generate_uid()
    paths = {}
    for view in ("frontal", "lateral"):
        img = nib.load(str(root / "sample" / f"{view}.nii.gz"))  # line integrals, (u, v) = (column, row)
        spacing = [float(z) for z in img.header.get_zooms()[:2]]
        pixels = np.rint(img.get_fdata().T * 1000)
        paths[view] = _clinical_dicom(tmp_path / f"{view}.dcm", pixels, spacing, study_uid)
    args = ["--frontal_path", paths["frontal"], "--lateral_path", paths["lateral"], "--output_dir", tmp_path / "out"]
    _run(root, *args, *FAST[CASCADE], cwd=_elsewhere(tmp_path))
    (case,) = (tmp_path / "out").iterdir()
    record = json.loads((case / "ct.json").read_text())["dicom"]
    assert record["study_instance_uid"] == study_uid and record["patient_and_study"].startswith("copied")
    for name, folder in (("ct.nii.gz", "ct_dicom"), ("uncertainty.nii.gz", "uncertainty_dicom")):
        key = folder.split("_")[0]
        assert record[key]["folder"] == folder and len(list((case / folder).iterdir())) == 64
        nii = nib.load(str(case / name))
        vol, affine = read_dicom_ct(case / folder)
        assert np.allclose(affine, nii.affine, atol=1e-4), name
        assert record[key]["max_error_hu"] <= 2**-8
        assert np.abs(vol - nii.get_fdata()).max() <= record[key]["max_error_hu"] + 1e-4, name
    ct, unc = (dcmread(str(case / f / "0001.dcm")) for f in ("ct_dicom", "uncertainty_dicom"))
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    assert f"{CASCADE} {version}" in ct.SeriesDescription and "NOT DIAGNOSTIC" in ct.SeriesDescription
    assert "SD in HU" in unc.SeriesDescription and unc.RescaleType == "US" and ct.RescaleType == "HU"
    assert ct.SeriesInstanceUID == record["ct"]["series_instance_uid"] != unc.SeriesInstanceUID
    assert ct.FrameOfReferenceUID == unc.FrameOfReferenceUID == record["frame_of_reference_uid"]
    source = dcmread(str(paths["frontal"]))
    assert (ct.PatientID, ct.AccessionNumber, ct.StudyInstanceUID) == ("P-0042", "ACC123", study_uid)
    refs = {item.ReferencedSOPInstanceUID for item in ct.SourceImageSequence}
    assert source.SOPInstanceUID in refs and len(refs) == 2


def test_mask_refiner_writes_a_dicom_segmentation_of_a_dicom_image(tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    root = _copy_bundles(tmp_path, MASK)
    pixels = np.asarray(Image.open(root / "sample" / "slice_100000.png"))
    image = _clinical_dicom(tmp_path / "slice_100000.dcm", pixels, [0.5, 0.5], generate_uid())
    probabilities = root / "sample" / "slice_100000_probabilities.npy"
    args = ["--image_path", image, "--probabilities_path", probabilities, "--output_dir", tmp_path / "out"]
    _run(root, *args, cwd=_elsewhere(tmp_path))
    mask = np.asarray(Image.open(tmp_path / "out" / "slice_100000_mask.png")) > 0
    seg, source = hd.seg.segread(str(tmp_path / "out" / "slice_100000_seg.dcm")), dcmread(str(image))
    assert seg.Modality == "SEG" and "NOT FOR DIAGNOSTIC USE" in seg.SeriesDescription
    assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert mask.any() and np.array_equal(pixels.reshape(mask.shape).astype(bool), mask)
    # a PNG image has no header to file a segmentation under: PNGs only
    _run(root, "--output_dir", tmp_path / "png", cwd=_elsewhere(tmp_path / "out"))
    assert not list((tmp_path / "png").glob("*.dcm"))


def test_full_cascade_1_to_3_runs_on_the_sample_outside_the_repository_and_from_the_exported_zip(tmp_path):
    """Covers both the run from a working directory that is not the repository and the run of the exported zip: the
    zip carries every stage's weights, and ``--stages 1-3`` from it, with its code only, turns the sample X-rays into
    a 256^3 CT (1.25 mm voxels over the 320 mm cube), each stage's CT on its own grid and the stages in ct.json.

    One DDIM step and one sample per stage, and tiles without overlap (64 for stage 3 instead of 125): the chain,
    not the sampling schedule, is under test (about a minute on 2 CPU cores)."""
    from custom.core.transforms import cube_affine

    proc = run_cli("export-bundle", BUNDLES / CASCADE, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    (archive,) = (tmp_path / "dist").glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for weights in ("model.pt", "model_stage2.pt", "model_stage3.pt"):
            assert f"{CASCADE}/models/{weights}" in names, f"{weights} is not exported"
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / CASCADE
    cwd = _elsewhere(tmp_path)
    args = ["--frontal_path", root / "sample" / "frontal.nii.gz", "--lateral_path", root / "sample" / "lateral.nii.gz"]
    args += ["--output_dir", tmp_path / "out", "--stages", "1-3", "--num_inference_steps", 1, "--num_samples", 1]
    for n in (2, 3):
        args += [f"--stage{n}#num_inference_steps", 1, f"--stage{n}#num_samples", 1, f"--stage{n}#overlap", 0]
    # -S and the isolated environment: the code comes from the zip only, as on a machine without the repository
    _run(root, *args, cwd=cwd, env=_isolated_env(), flags=["-S"])
    assert not list(cwd.iterdir()), "the run wrote into the working directory"
    (case,) = (tmp_path / "out").iterdir()
    expected = {"ct": 256, "uncertainty": 256, "ct_stage1": 64, "ct_stage2": 128, "ct_stage3": 256}
    for name, size in expected.items():
        img = nib.load(str(case / f"{name}.nii.gz"))
        assert img.shape == (size,) * 3, name
        np.testing.assert_allclose(img.affine, cube_affine(size, 320.0), atol=1e-4, err_msg=name)
        assert np.isfinite(np.asarray(img.dataobj)).all(), name
    np.testing.assert_allclose(nib.load(str(case / "ct.nii.gz")).header.get_zooms(), (1.25,) * 3)
    hu = np.asarray(nib.load(str(case / "ct.nii.gz")).dataobj)
    assert hu.min() >= -200 and hu.max() <= 200 and hu.std() > 0
    np.testing.assert_array_equal(hu, np.asarray(nib.load(str(case / "ct_stage3.nii.gz")).dataobj))
    record = json.loads((case / "ct.json").read_text())
    assert record["stages"] == "1-3" and record["voxel_spacing_mm"] == 1.25
    assert record["stage_outputs"] == ["ct_stage1.nii.gz", "ct_stage2.nii.gz", "ct_stage3.nii.gz"]
