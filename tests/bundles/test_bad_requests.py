"""Bad requests to the three bundles through ``python -m monai.bundle run``, as users type them: each ends with one
``error:`` line naming the key to set and exit status 2, checked before any network is loaded (or, for what only
a transform can see, as soon as the engine meets it), and nothing is written."""

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT, run_bundle, unprivileged

XRAY = ROOT / "bundles" / "xray2ct_cascade_diffusion" / "sample"
CT_SAMPLE = ROOT / "bundles" / "ct_detail_refinement" / "sample" / "phantom_100000"
MASK = ROOT / "bundles" / "mask_refiner_2d" / "sample"
FAST = ["--num_inference_steps", 2, "--num_samples", 1]
VARIANT_B = ("inference.json", "inference_variant_b.json")

# name: (bundle, configs, arguments, fragments of the error line); {t} is a scratch folder
BAD_REQUESTS = {
    "one X-ray": ("xray2ct_cascade_diffusion", None, ["--frontal_path", XRAY / "frontal.nii.gz"], ["set lateral_path"]),
    "fractional steps": (
        "xray2ct_cascade_diffusion",
        None,
        ["--num_inference_steps", 2.5],
        ["num_inference_steps must be a whole number", "2.5"],
    ),
    "no samples": ("xray2ct_cascade_diffusion", None, ["--num_samples", 0], ["num_samples must be at least 1"]),
    "check_views not a boolean": (
        "xray2ct_cascade_diffusion",
        None,
        ["--check_views", "maybe"],
        ["check_views must be true or false"],
    ),
    "missing checkpoint": ("xray2ct_cascade_diffusion", None, ["--ckpt_path", "{t}/nope.pt"], ["ckpt_path", "nope.pt"]),
    "missing datalist": ("xray2ct_cascade_diffusion", None, ["--dataset_dir", "{t}"], ["datalist", "dataset_dir"]),
    "unreadable X-ray": (
        "xray2ct_cascade_diffusion",
        None,
        ["--frontal_path", "{t}/noise.nii.gz", "--lateral_path", XRAY / "lateral.nii.gz", *FAST],
        ["noise.nii.gz", "not a readable NIfTI"],
    ),
    "volume size the shipped weights were not trained at": (
        "xray2ct_cascade_diffusion",
        None,
        ["--volume_size", 32],
        ["volume_size 32", "trained at volume_size 64", "ckpt_path"],
    ),
    "weights of another architecture": (
        "xray2ct_cascade_diffusion",
        None,
        ["--channels", "[16,32,64]", *FAST],
        ["checkpoint does not fit the network", "ckpt_path"],
    ),
    "threshold above 1": ("mask_refiner_2d", None, ["--threshold", 1.5], ["threshold must be at most 1"]),
    "image without its map": (
        "mask_refiner_2d",
        None,
        ["--image_path", MASK / "slice_100000.png"],
        ["set probabilities_path"],
    ),
    "pickled probability map": (
        "mask_refiner_2d",
        None,
        ["--image_path", MASK / "slice_100000.png", "--probabilities_path", "{t}/objects.npy"],
        ["objects.npy: not a numeric array"],
    ),
    "refiner size off the grid": ("ct_detail_refinement", None, ["--volume_size", 63], ["multiple of 4", "63"]),
    "unknown variant": ("ct_detail_refinement", None, ["--variant", "c"], ["variant must be one of a, b"]),
    "detail refiner size off the grid": (
        "ct_detail_refinement",
        VARIANT_B,
        [
            "--frontal_path",
            CT_SAMPLE / "frontal.nii.gz",
            "--lateral_path",
            CT_SAMPLE / "lateral.nii.gz",
            "--volume_size",
            30,
        ],
        ["volume_size must be a multiple of 4"],
    ),
    "refiner missing checkpoint": ("ct_detail_refinement", None, ["--ckpt_path", "{t}/nope.pt"], ["nope.pt"]),
}


def assert_one_error_line(proc, *fragments):
    """Exit status 2 and, after MONAI's own start-up warnings, one line 'error: ...' and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    for f in fragments:
        assert f in errors[0], (f, errors[0])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    t = tmp_path_factory.mktemp("requests")
    (t / "noise.nii.gz").write_bytes(np.random.default_rng(0).bytes(2000))
    np.save(t / "objects.npy", np.array([{"p": 0.5}, None], dtype=object))  # np.save pickles object arrays
    return t


@pytest.fixture(scope="module")
def bad_request_runs(scratch):
    """All bad requests at once, two subprocesses at a time, each with its own output folder."""

    def run(item):
        name, (bundle, configs, args, _) = item
        out = scratch / re.sub(r"\W+", "_", name)
        args = [str(a).format(t=scratch) for a in args] + ["--output_dir", out]
        return name, run_bundle(bundle, *args, configs=configs or ("inference.json",))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, BAD_REQUESTS.items()))


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_ends_with_one_error_line_and_writes_nothing(bad_request_runs, scratch, name):
    proc = bad_request_runs[name]
    assert_one_error_line(proc, *BAD_REQUESTS[name][3])
    assert not (scratch / re.sub(r"\W+", "_", name)).exists()


def test_requests_are_checked_before_any_network_is_loaded(bad_request_runs):
    """Only what a transform reads (the files' contents) or the checkpoint loader finds (weights of another
    architecture) reaches the engine; every setting stops it earlier."""
    engine_errors = {"unreadable X-ray", "pickled probability map", "weights of another architecture"}
    for name, proc in bad_request_runs.items():
        started = "Engine run resuming" in proc.stdout
        assert started == (name in engine_errors), (name, proc.stdout[-2000:])


def test_check_views_false_in_lower_case_turns_the_view_check_off(tmp_path):
    """Fire passes ``false`` as the string 'false', which is truthy: the swapped views below would be refused."""
    swapped = ["--frontal_path", XRAY / "lateral.nii.gz", "--lateral_path", XRAY / "frontal.nii.gz", *FAST]
    proc = run_bundle("xray2ct_cascade_diffusion", *swapped, "--check_views", "false", "--output_dir", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "a").rglob("ct.nii.gz"))) == 1
    proc = run_bundle("xray2ct_cascade_diffusion", *swapped, "--check_views", "TRUE", "--output_dir", tmp_path / "b")
    assert_one_error_line(proc, "swapped")


def test_an_output_folder_that_cannot_be_written_is_refused_before_inference(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run_bundle("mask_refiner_2d", "--output_dir", locked / "masks", prefix=unprivileged())
        assert_one_error_line(proc, "output_dir", "cannot write")
        assert "Engine run" not in proc.stdout
        proc = run_bundle("xray2ct_cascade_diffusion", "--output_dir", locked, *FAST, prefix=unprivileged())
        assert_one_error_line(proc, "output_dir", "cannot write")
    finally:
        locked.chmod(0o755)
