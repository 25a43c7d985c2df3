"""The ct_detail_refinement bundle run for real from its JSON configs at tiny sizes: train (the super-resolution
refiner of the base configs and the detail refiner, the degrade, frozen-cascade and file coarse sources, resume),
evaluate and inference."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_CASCADE, run_cli, run_workflow, tensorboard_files_without_data

from custom.core.errors import InputError
from custom.xray2ct.network import CascadeDenoiser

BUNDLE = ROOT / "bundles" / "ct_detail_refinement"
CONFIGS = BUNDLE / "configs"
TINY_A = {"volume_size": 16, "scale_factor": 2, "channels": [8, 4], "num_blocks": [1, 1], "num_workers": 0}
TINY_B = {
    "volume_size": 16,
    "xray_size": 16,
    "channels": [4, 8],
    "num_blocks": [1, 1],
    "xray_channels": 8,
    "lift_channels": 4,
    "frequency_bins": 4,
    "num_workers": 0,
}
CASCADE = TINY_CASCADE


def _run(configs, workflow_type, bundle_root, **overrides):
    return run_workflow(CONFIGS, configs, workflow_type, bundle_root, **overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    assert run_cli("phantoms", tmp / "ph", "--count", 5, "--size", 16).returncode == 0
    proc = run_cli("prepare", tmp / "ph", tmp / "prep", "--size", 16, "--test_fraction", 0.4, "--val_fraction", 0.2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp


@pytest.fixture(scope="module")
def trained_a(data):
    root = data / "bundle_a"
    _run(["train.json"], "train", root, dataset_dir=str(data / "prep"), max_epochs=2, **TINY_A)
    return root


def test_train_a_writes_checkpoints_and_resumes(trained_a, data):
    runs = trained_a / "runs" / "super_resolution_16to64"
    final = torch.load(runs / "checkpoint_final.pt", weights_only=True)
    n_train = len(json.loads((data / "prep" / "datalist.json").read_text())["training"])
    assert final["trainer"]["iteration"] == 2 * n_train and set(final) >= {"model", "optimizer", "lr_scheduler"}
    best = torch.load(runs / "model.pt", weights_only=True)
    assert any(k.startswith("heads.") for k in best)  # validation-PSNR checkpoint of the network
    wf = _run(["train.json"], "train", trained_a, dataset_dir=str(data / "prep"), max_epochs=3, resume=True, **TINY_A)
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 3


def _train_b_one_epoch(root, data, layer="train_detail.json", **overrides) -> dict:
    """The detail refiner's train.json + train_detail.json (or its deprecated name) for one tiny epoch; returns the
    final checkpoint."""
    _run(["train.json", layer], "train", root, dataset_dir=str(data / "prep"), max_epochs=1, **overrides, **TINY_B)
    folder = "detail" if layer == "train_detail.json" else "variant_b"
    return torch.load(root / "runs" / folder / "checkpoint_final.pt", weights_only=True)


def test_train_b_from_the_frozen_cascade_checkpoint(data):
    torch.manual_seed(0)
    net = CascadeDenoiser(**CASCADE)
    torch.save({"model": net.state_dict()}, data / "cascade.pt")  # a tiny, randomly initialised cascade stage
    state = _train_b_one_epoch(
        data / "bundle_b",
        data,
        coarse_source="cascade",
        cascade_checkpoint=str(data / "cascade.pt"),
        cascade_network=CASCADE,
        cascade_num_inference_steps=2,
    )
    assert state["trainer"]["iteration"] > 0 and any(k.startswith("lift.") for k in state["model"])


def test_train_b_from_coarse_ct_files_in_coarse_dir(data):
    import shutil

    datalist = json.loads((data / "prep" / "datalist.json").read_text())
    coarse_dir = data / "coarse_files"
    for case in datalist["training"] + datalist["validation"]:  # stand-ins for the cascade's ct.nii.gz outputs
        (coarse_dir / case["case_id"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "prep" / case["ct"], coarse_dir / case["case_id"] / "ct.nii.gz")
    state = _train_b_one_epoch(data / "bundle_b_files", data, coarse_source="file", coarse_dir=str(coarse_dir))
    assert state["trainer"]["iteration"] == len(datalist["training"])
    # the 0.3.0 name of the same layer still runs, for one release, and says which name replaces it
    with pytest.warns(FutureWarning, match="refiner 'detail'"):
        old = _train_b_one_epoch(
            data / "bundle_b_old", data, "train_variant_b.json", coarse_source="file", coarse_dir=str(coarse_dir)
        )
    assert old["trainer"]["iteration"] == len(datalist["training"])


def test_evaluate_writes_the_coarse_vs_refined_table(trained_a, data):
    out = data / "eval_a"
    _run(
        ["train.json", "evaluate.json"],
        "eval",
        trained_a,
        dataset_dir=str(data / "prep"),
        ckpt_path=str(trained_a / "runs" / "super_resolution_16to64" / "model.pt"),
        output_dir=str(out),
        **TINY_A,
    )
    n_test = len(json.loads((data / "prep" / "datalist.json").read_text())["test"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 3 * n_test and {r["method"] for r in rows} == {"refined", "coarse", "trilinear"}
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["cases"] == n_test and "sharpness" in summary["refined"] and "data range 400" in summary["convention"]
    )


@pytest.mark.parametrize("variant", ["super_resolution_16to64", "detail"])
def test_inference_writes_the_seed_output_structure(trained_a, data, variant):
    out = data / f"infer_{variant}"
    if variant == "super_resolution_16to64":
        configs, tiny, ckpt = ["inference.json"], TINY_A, trained_a / "runs" / "super_resolution_16to64" / "model.pt"
    else:
        configs, tiny, ckpt = ["inference.json", "inference_detail.json"], TINY_B, data / "b.pt"
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser.update({k: v for k, v in tiny.items() if k != "num_workers"})
        torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    _run(
        configs,
        "infer",
        data,
        dataset_dir=str(data / "prep"),
        ckpt_path=str(ckpt),
        output_dir=str(out),
        coarse_source="degrade",
        **{k: v for k, v in tiny.items() if k != "num_workers"},
    )
    cases = json.loads((data / "prep" / "datalist.json").read_text())["test"]
    for case in cases:
        folder = out / case["case_id"]
        for name in ("coarse.nii.gz", "refined.nii.gz", "ground_truth.nii.gz", f"{case['case_id']}_comparison.png"):
            assert (folder / name).is_file(), name
    text = (out / "metrics.txt").read_text()
    assert f"cases with ground truth: {len(cases)}" in text and "refined" in text and "coarse" in text
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporary files


def _input_errors(excinfo) -> list:
    chain, e = [], excinfo.value
    while e is not None:  # the engine wraps the transform's error; the InputError is in the chain
        chain.append(e)
        e = e.__cause__ or e.__context__
    return [str(c) for c in chain if isinstance(c, InputError)]


def test_inference_refines_a_coarse_ct_file_without_ground_truth(trained_a, data):
    case = json.loads((data / "prep" / "datalist.json").read_text())["test"][0]
    src = nib.load(data / "prep" / case["ct"])
    affine = src.affine.copy()
    affine[:3, 3] += [50.0, -30.0, 20.0]  # a CT that is not centred on the origin must come back where it was
    (data / "shifted" / case["case_id"]).mkdir(parents=True)
    path = data / "shifted" / case["case_id"] / "ct.nii.gz"  # <case>/ct.nii.gz, as the cascade writes its output
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32), affine), str(path))
    out = data / "infer_file"
    tiny = {k: v for k, v in TINY_A.items() if k != "num_workers"}
    ckpt = str(trained_a / "runs" / "super_resolution_16to64" / "model.pt")
    _run(["inference.json"], "infer", data, coarse_path=str(path), ckpt_path=ckpt, output_dir=str(out), **tiny)
    folder = out / case["case_id"]
    refined = nib.load(folder / "refined.nii.gz")
    n = TINY_A["volume_size"]
    assert refined.shape == (n,) * 3 and (folder / "coarse.nii.gz").is_file()
    assert not (folder / "ground_truth.nii.gz").exists()
    assert "cases with ground truth: 0" in (out / "metrics.txt").read_text()
    np.testing.assert_allclose(refined.header.get_zooms(), [320.0 / n] * 3, rtol=1e-5)
    centre = lambda img: (img.affine @ np.append((np.array(img.shape) - 1) / 2, 1))[:3]  # noqa: E731
    # within the 1 mm grid the CT is resampled on when it is shrunk
    np.testing.assert_allclose(centre(refined), centre(src) + [50.0, -30.0, 20.0], atol=1.0)

    with pytest.raises(Exception) as err:
        _run(
            ["inference.json"],
            "infer",
            data,
            coarse_path=str(data / "missing.nii.gz"),
            ckpt_path=ckpt,
            output_dir=str(data / "infer_missing"),
            **tiny,
        )
    assert any("missing.nii.gz: no such file" in m for m in _input_errors(err))
    assert not list(data.glob("infer_missing/**/*.nii.gz"))
    with pytest.raises(Exception) as err:
        _run(
            ["inference.json", "inference_detail.json"],
            "infer",
            data,
            coarse_path=str(path),
            output_dir=str(data / "infer_b_no_xrays"),
            **{k: v for k, v in TINY_B.items() if k != "num_workers"},
        )
    assert any("the detail refiner refines with the two X-rays" in m for m in _input_errors(err))


def test_inference_b_from_the_two_xrays_runs_the_cascade_then_the_refiner(data):
    """X-rays in, refined CT out in one command: the detail refiner's coarse input is the frozen cascade on the same
    views."""
    from monai.bundle import ConfigParser

    case = json.loads((data / "prep" / "datalist.json").read_text())["test"][0]
    tiny = {k: v for k, v in TINY_B.items() if k != "num_workers"}
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_detail.json")])
    parser.update(tiny)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), data / "b_xrays.pt")
    torch.save({"model": CascadeDenoiser(**CASCADE).state_dict()}, data / "cascade_xrays.pt")
    configs = ["inference.json", "inference_detail.json"]
    views = {
        "frontal_path": str(data / "prep" / case["frontal"]),
        "lateral_path": str(data / "prep" / case["lateral"]),
        "ckpt_path": str(data / "b_xrays.pt"),
        "cascade_checkpoint": str(data / "cascade_xrays.pt"),
        "cascade_network": CASCADE,
        "cascade_num_inference_steps": 2,
        "cascade_num_samples": 1,
        **tiny,
    }
    _run(configs, "infer", data, output_dir=str(data / "infer_b_xrays"), **views)
    folder = data / "infer_b_xrays" / case["case_id"]  # named after the X-rays' folder
    d = TINY_B["volume_size"]
    refined = nib.load(folder / "refined.nii.gz")
    assert refined.shape == (d,) * 3
    assert (folder / "coarse.nii.gz").is_file() and not (folder / "ground_truth.nii.gz").exists()

    # output_size: the same run written at twice the side, trilinear, on the same cube (half the voxel size)
    _run(configs, "infer", data, output_dir=str(data / "infer_b_xrays_2x"), output_size=2 * d, **views)
    fine = nib.load(data / "infer_b_xrays_2x" / case["case_id"] / "refined.nii.gz")
    assert fine.shape == (2 * d,) * 3
    np.testing.assert_allclose(np.diag(fine.affine)[:3], np.diag(refined.affine)[:3] / 2, rtol=1e-5)
    corner = lambda img: img.affine[:3, :3] @ np.full(3, -0.5) + img.affine[:3, 3]  # noqa: E731  outer voxel corner
    np.testing.assert_allclose(corner(fine), corner(refined), atol=1e-4)
    expected = torch.nn.functional.interpolate(
        torch.as_tensor(np.asarray(refined.dataobj))[None, None], size=(2 * d,) * 3, mode="trilinear"
    )[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(fine.dataobj), expected, atol=0.5)  # HU, float32 round trips
    with pytest.raises(Exception) as err:
        _run(configs, "infer", data, output_dir=str(data / "infer_b_small"), output_size=d // 2, **views)
    assert any("output_size" in m and "at least the refiner's" in m for m in _input_errors(err))


def test_multi_gpu_config_runs_two_gloo_processes_with_rank_zero_logging(tmp_path):
    import os
    import re
    import subprocess
    import sys

    # MONAI's DistributedSampler needs at least one validation case per process
    data = tmp_path
    assert run_cli("phantoms", data / "ph", "--count", 8, "--size", 16).returncode == 0
    proc = run_cli("prepare", data / "ph", data / "prep", "--size", 16, "--test_fraction", 0.25, "--val_fraction", 0.25)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in ("train.json", "multi_gpu_train.json")) + "]"
    args = ["--bundle_root", str(data / "ddp"), "--dataset_dir", str(data / "prep"), "--max_epochs", "1"]
    args += ["--time_limit_minutes", "100"]  # its per-iteration all-reduce must run on both ranks, or DDP hangs
    for k, v in TINY_A.items():
        args += [f"--{k}", json.dumps(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", files, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=data, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((data / "ddp").rglob("model.pt"))) == 1
    log = proc.stdout + proc.stderr
    assert len(re.findall(r"Epoch: 1/1, Iter: 1/\d+ -- ", log)) == 1, "both ranks logged"
    assert not tensorboard_files_without_data(data / "ddp"), "rank 1 built a TensorBoard writer"
