"""The 64^3 -> 256^3 super-resolution refiner's configs (train_super_resolution.json, inference_super_resolution.json)
run for real at tiny sizes: training on aligned crops with coarse CTs from files, tiled inference, the chain
X-rays -> cascade stage 1 -> refiner, and strict loading of every shipped weight file; plus the renamed configs."""

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_CASCADE, run_cli, run_workflow

from custom.core.errors import InputError
from custom.core.io import save_nifti
from custom.core.transforms import cube_affine, finer_affine
from custom.xray2ct.network import CascadeDenoiser

BUNDLE = ROOT / "bundles" / "ct_detail_refinement"
CONFIGS = BUNDLE / "configs"
SR = {"volume_size": 32, "channels": [4, 4, 4], "num_blocks": [1, 1, 1], "tile_size": 4, "tile_batch_size": 4}
SR_TRAIN = {**SR, "crop_size": 4, "crops_per_volume": 2, "batch_size": 2, "num_workers": 0, "dataloader_workers": 0}
CASCADE = TINY_CASCADE
# every weight file the bundle ships, with the configs that load it (inference.json first)
SHIPPED = {
    "model.pt": ["inference.json"],
    "detail.pt": ["inference.json", "inference_detail.json"],
    "super_resolution.pt": ["inference.json", "inference_super_resolution.json"],
}


def _run(configs, workflow_type, bundle_root, **overrides):
    return run_workflow(CONFIGS, configs, workflow_type, bundle_root, **overrides)


def _parser(configs, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared 32^3 phantoms and, per case, an 8^3 coarse CT file (the ground truth averaged down by 4, on the
    cube grid the cascade writes its ct.nii.gz on)."""
    tmp = tmp_path_factory.mktemp("sr")
    assert run_cli("phantoms", tmp / "ph", "--count", 5, "--size", 32).returncode == 0
    proc = run_cli("prepare", tmp / "ph", tmp / "prep", "--size", 32, "--test_fraction", 0.4, "--val_fraction", 0.2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    datalist = json.loads((tmp / "prep" / "datalist.json").read_text())
    for case in datalist["training"] + datalist["validation"] + datalist["test"]:
        ct = torch.as_tensor(np.asarray(nib.load(tmp / "prep" / case["ct"]).dataobj, dtype=np.float32))
        low = torch.nn.functional.avg_pool3d(ct[None, None], 4)[0, 0].numpy()
        save_nifti(low, cube_affine(8, 320.0), tmp / "coarse" / case["case_id"] / "ct.nii.gz")
    return tmp


@pytest.fixture(scope="module")
def trained(data):
    root = data / "bundle"
    configs = ["train.json", "train_super_resolution.json"]
    _run(
        configs,
        "train",
        root,
        dataset_dir=str(data / "prep"),
        coarse_dir=str(data / "coarse"),
        max_epochs=2,
        **SR_TRAIN,
    )
    return root / "runs" / "super_resolution"


def test_training_on_crops_leaves_plain_state_dicts_every_epoch(trained, data):
    n_train = len(json.loads((data / "prep" / "datalist.json").read_text())["training"])
    final = torch.load(trained / "checkpoint_final.pt", weights_only=True)
    # batch_size volumes x crops_per_volume crops per step
    assert final["trainer"]["iteration"] == 2 * -(-n_train // SR_TRAIN["batch_size"])
    assert {"model", "ema", "optimizer", "lr_scheduler"} <= set(final)
    net = _parser(["inference.json", "inference_super_resolution.json"], **SR).get_parsed_content("network_def")
    for name in ("model_latest.pt", "model.pt"):  # the EMA weights each epoch; the best validation PSNR
        state = torch.load(trained / name, weights_only=True)
        net.load_state_dict(state, strict=True)
    latest = torch.load(trained / "model_latest.pt", weights_only=True)
    assert all(torch.equal(latest[k], v) for k, v in final["ema"].items())  # the EMA weights, not the online ones


def test_tiled_inference_from_a_datalist_with_coarse_files(trained, data):
    out = data / "infer_files"
    _run(
        ["inference.json", "inference_super_resolution.json"],
        "infer",
        data,
        dataset_dir=str(data / "prep"),
        coarse_source="file",
        coarse_dir=str(data / "coarse"),
        ckpt_path=str(trained / "model_latest.pt"),
        output_dir=str(out),
        **SR,
    )
    for case in json.loads((data / "prep" / "datalist.json").read_text())["test"]:
        refined = nib.load(out / case["case_id"] / "refined.nii.gz")
        truth = nib.load(data / "prep" / case["ct"])
        assert refined.shape == truth.shape == (32,) * 3
        np.testing.assert_allclose(refined.affine, truth.affine, atol=1e-4)  # the 4x grid is the truth's grid
    assert "trilinear" in (out / "metrics.txt").read_text()


def test_xrays_to_cascade_stage1_to_super_resolution_in_one_run(trained, data):
    """Two X-ray files in; the frozen cascade stage 1 reconstructs the coarse CT, the refiner takes it to 4x."""
    case = json.loads((data / "prep" / "datalist.json").read_text())["test"][0]
    torch.manual_seed(0)
    torch.save({"model": CascadeDenoiser(**CASCADE).state_dict()}, data / "cascade.pt")
    out = data / "infer_xrays"
    _run(
        ["inference.json", "inference_super_resolution.json"],
        "infer",
        data,
        frontal_path=str(data / "prep" / case["frontal"]),
        lateral_path=str(data / "prep" / case["lateral"]),
        cascade_checkpoint=str(data / "cascade.pt"),
        cascade_network=CASCADE,
        cascade_num_inference_steps=2,
        cascade_num_samples=1,
        ckpt_path=str(trained / "model_latest.pt"),
        output_dir=str(out),
        **SR,
    )
    folder = out / case["case_id"]
    coarse, refined = nib.load(folder / "coarse.nii.gz"), nib.load(folder / "refined.nii.gz")
    assert coarse.shape == (8,) * 3 and refined.shape == (32,) * 3
    np.testing.assert_allclose(coarse.affine, cube_affine(8, 320.0), atol=1e-4)
    np.testing.assert_allclose(refined.affine, finer_affine(coarse.affine, (8,) * 3, (32,) * 3), atol=1e-6)
    np.testing.assert_allclose(refined.affine, cube_affine(32, 320.0), atol=1e-4)  # 10 mm voxels, same cube
    assert np.isfinite(refined.get_fdata()).all() and not (folder / "ground_truth.nii.gz").exists()


def test_a_ct_file_off_the_origin_comes_back_on_the_4x_grid_over_it(trained, data):
    case = json.loads((data / "prep" / "datalist.json").read_text())["test"][1]
    src = nib.load(data / "coarse" / case["case_id"] / "ct.nii.gz")
    affine = src.affine.copy()
    affine[:3, 3] += [40.0, -20.0, 60.0]
    path = data / "shifted" / "patient.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32), affine), str(path))
    out = data / "infer_ct"
    ckpt = str(trained / "model_latest.pt")
    _run(
        ["inference.json", "inference_super_resolution.json"],
        "infer",
        data,
        coarse_path=str(path),
        ckpt_path=ckpt,
        output_dir=str(out),
        **SR,
    )
    refined = nib.load(out / "patient" / "refined.nii.gz")
    assert refined.shape == (32,) * 3
    np.testing.assert_allclose(refined.affine, finer_affine(affine, (8,) * 3, (32,) * 3), atol=1e-4)


def test_the_super_resolution_configs_default_to_the_sample_xrays_and_the_shipped_size():
    layer = ["inference.json", "inference_super_resolution.json"]
    sample = BUNDLE / "sample" / "phantom_100000"
    parser = _parser(layer)
    assert parser.get_parsed_content("frontal_file") == str(sample / "frontal.nii.gz")
    assert parser.get_parsed_content("coarse_source") == "cascade"
    assert _parser(layer, coarse_path="ct.nii.gz").get_parsed_content("frontal_file") == ""
    assert _parser(layer, dataset_dir="/data").get_parsed_content("frontal_file") == ""
    assert _parser(layer, lateral_path="l.nii.gz").get_parsed_content("frontal_file") == ""  # no half sample pair
    from custom.ct_refinement.super_resolution import SuperResolutionRefiner

    def size(net):
        return sum(p.numel() for p in net.parameters())

    # both configs describe the shipped (CPU-trained) widths, the class defaults the design size
    train = _parser(["train.json", "train_super_resolution.json"])
    shipped = size(parser.get_parsed_content("network_def"))
    assert 0.3e6 < shipped < 0.45e6
    assert size(train.get_parsed_content("network_def")) == shipped
    assert 1.9e6 < size(SuperResolutionRefiner()) < 2.3e6
    # tiles are the training crops (instance norm: the network only knows crops of that size)
    assert train.get_parsed_content("crop_size") == parser.get_parsed_content("tile_size") == 16
    assert train.get_parsed_content("volume_size") // train.get_parsed_content("scale_factor") == 64


def test_every_shipped_weight_file_loads_strictly_into_its_config():
    shipped = sorted(p.name for p in (BUNDLE / "models").glob("*.pt"))
    assert set(shipped) <= set(SHIPPED), f"weights without a config: {set(shipped) - set(SHIPPED)}"
    assert {"model.pt", "detail.pt", "super_resolution.pt"} <= set(shipped)
    for name in shipped:
        net = _parser(SHIPPED[name]).get_parsed_content("network_def")
        state = torch.load(BUNDLE / "models" / name, weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state.get("model"), dict) else state, strict=True)
        assert _parser(SHIPPED[name]).get_parsed_content("ckpt_path") == str(BUNDLE / "models" / name)
    old = _parser(["inference.json", "inference_variant_b.json"]).get_parsed_content("ckpt_path")
    assert old == str(BUNDLE / "models" / "detail.pt")  # the old config name reads the renamed weights


def test_old_names_work_for_one_release_with_a_warning_that_names_the_new_one(tmp_path):
    from custom.ct_refinement.checks import check_training_request

    with pytest.warns(FutureWarning, match="refiner 'detail'"):
        check_training_request("detail", tmp_path, volume_size=64, scale_factor=1, channels=[16, 32, 64], variant="b")
    with pytest.warns(FutureWarning, match="super_resolution"):
        check_training_request("super_resolution_16to64", tmp_path, variant="a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_request("super_resolution", tmp_path, volume_size=256, crop_size=16)
    with pytest.raises(InputError, match="variant must be one of a, b"):
        check_training_request("detail", tmp_path, variant="c")
    with pytest.raises(InputError, match="refiner must be one of super_resolution, super_resolution_16to64, detail"):
        check_training_request("sr", tmp_path)
    with pytest.raises(InputError, match="coarse_dir"):
        check_training_request("super_resolution", tmp_path, volume_size=256, coarse_source="file")
    for name in ("train_variant_b.json", "inference_variant_b.json"):
        assert json.loads((CONFIGS / name).read_text())["variant"] == "b"  # the deprecated layer warns when run


def test_coarse_files_named_in_the_data_list_need_no_coarse_dir(tmp_path):
    """Items may name their own coarse CT ('coarse', e.g. each case twice: the cascade's output and detail's); the
    check of every training entry point (single and multi-GPU) reads the data list, and names what is missing."""
    from custom.ct_refinement.checks import check_training_request

    assert "datalist=@datalist" in json.loads((CONFIGS / "train.json").read_text())["training_check"]
    for name in ("train.json", "multi_gpu_train.json"):  # both initialize lists run that one check first
        assert json.loads((CONFIGS / name).read_text())["initialize"][0] == "@training_check"
    items = [{"case_id": "a", "coarse": "a/ct.nii.gz"}, {"case_id": "a_detail", "coarse": "a/refined.nii.gz"}]
    listed = tmp_path / "datalist.json"

    def check(datalist=listed):
        check_training_request("super_resolution", tmp_path, volume_size=256, coarse_source="file", datalist=datalist)

    listed.write_text(json.dumps({"training": items, "validation": items[:1]}))
    check()
    listed.write_text(json.dumps({"training": items, "validation": [{"case_id": "b"}]}))
    with pytest.raises(InputError, match=r"needs coarse_dir.*missing in 1 of 3 items, e\.g\. 'b'"):
        check()
    with pytest.raises(InputError, match=r"needs coarse_dir.*no such file"):
        check(tmp_path / "absent.json")
    listed.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(InputError, match=r"no training or validation items"):
        check()
    for broken in ("{", "[1, 2]"):
        listed.write_text(broken)
        with pytest.raises(InputError, match=r"not a datalist\.json"):
            check()
