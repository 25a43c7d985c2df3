"""Model-zoo conformance of every bundle: layout, metadata, key contract, network shape checks, TorchScript export."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_cli

BUNDLES = ["xray2ct_cascade_diffusion", "mask_refiner_2d", "ct_detail_refinement"]
METADATA_FIELDS = {
    "schema": str,
    "version": str,
    "changelog": dict,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "required_packages_version": dict,
    "optional_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "data_source": str,
    "intended_use": str,
    "references": list,
    "network_data_format": dict,
}
TENSOR_FIELDS = {
    "type",
    "format",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
}
# the diffusion denoiser takes (x_t, t, xrays[, prev]) and the detail refiner of ct_detail_refinement (coarse, xrays):
# verify_net_in_out feeds a single tensor, so they are excluded (ct_detail_refinement checks its default refiner,
# super_resolution_16to64)
NET_IN_OUT = {"mask_refiner_2d": ["--any", "64"], "ct_detail_refinement": ["--n", "1"]}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle):
    root = ROOT / "bundles" / bundle
    for rel in (
        "configs/metadata.json",
        "configs/train.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
    ):
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for key, kind in METADATA_FIELDS.items():
        assert isinstance(meta.get(key), kind), f"{key} should be a {kind.__name__}"
    assert meta["version"] in meta["changelog"]
    for side in ("inputs", "outputs"):
        assert meta["network_data_format"][side]
        for name, spec in meta["network_data_format"][side].items():
            assert TENSOR_FIELDS <= set(spec), f"{side}/{name} lacks {TENSOR_FIELDS - set(spec)}"
    for cfg in (root / "configs").glob("*.json"):
        text = cfg.read_text()
        json.loads(text)
        indents = [len(line) - len(line.lstrip(" ")) for line in text.splitlines()]
        assert all(i % 4 == 0 for i in indents), f"{cfg.name} is not 4-space indented"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from custom.mask_refiner.data import generate_source, setup_dataset

    tmp = tmp_path_factory.mktemp("conformance")
    assert run_cli("phantoms", tmp / "ph", "--count", 4, "--size", 16).returncode == 0
    assert (
        run_cli(
            "prepare", tmp / "ph", tmp / "ct", "--size", 16, "--test_fraction", 0.25, "--val_fraction", 0.25
        ).returncode
        == 0
    )
    src = generate_source(tmp / "src", n_patients=6, n_controls=2, width=32, seed=0, heights=(40, 60))
    setup_dataset(src, tmp / "refiner")
    return {
        "xray2ct_cascade_diffusion": {"dataset_dir": str(tmp / "ct")},
        "ct_detail_refinement": {"dataset_dir": str(tmp / "ct"), "volume_size": 16, "num_workers": 0},
        "mask_refiner_2d": {
            "dataset_dir": str(tmp / "refiner"),
            "image_path": str(src / "images" / "patient_000.png"),
            "probabilities_path": str(src / "patient_000_probabilities.npy"),
        },
    }


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("config,workflow_type", [("train.json", "train"), ("inference.json", "infer")])
def test_config_workflow_properties(bundle, config, workflow_type, tiny_data):
    from monai.bundle import ConfigWorkflow

    root = ROOT / "bundles" / bundle
    wf = ConfigWorkflow(
        config_file=str(root / "configs" / config),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **tiny_data[bundle],
    )
    wf.initialize()
    assert wf.check_properties() == []


def _bundle_args(root):
    """The metadata, inference config and bundle root options of ``python -m monai.bundle`` commands."""
    meta, cfg = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    return ["--meta_file", meta, "--config_file", cfg, "--bundle_root", root]


def _bundle_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize("bundle", list(NET_IN_OUT))
def test_verify_net_in_out(bundle):
    root = ROOT / "bundles" / bundle
    proc = _bundle_cli(
        "verify_net_in_out",
        "network_def",
        *_bundle_args(root),
        *NET_IN_OUT[bundle],
    )
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr, proc.stderr[-2000:]


def test_refiner_torchscript_export_matches(tmp_path):
    from custom.core.bundle import load_bundle_network

    root = ROOT / "bundles" / "mask_refiner_2d"
    ts_path = tmp_path / "refiner.ts"
    proc = _bundle_cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        ts_path,
        "--ckpt_file",
        root / "models" / "model.pt",
        *_bundle_args(root),
        "--use_trace",
        "True",
        "--input_shape",
        "[1,6,64,64]",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    net, _ = load_bundle_network(root, root / "models" / "model.pt")
    scripted = torch.jit.load(str(ts_path))
    x = torch.rand(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), scripted(x), atol=1e-5)


# (train configs, inference configs) that must build the same network from the same settings
PAIRS = [
    ("xray2ct_cascade_diffusion", ["train.json"], ["inference.json"]),
    ("mask_refiner_2d", ["train.json"], ["inference.json"]),
    ("ct_detail_refinement", ["train.json"], ["inference.json"]),
    ("ct_detail_refinement", ["train.json", "train_variant_b.json"], ["inference.json", "inference_variant_b.json"]),
]
SHARED_SETTINGS = ("window", "geometry", "cube_mm", "volume_size", "xray_size", "scale_factor", "threshold")


def _settings(bundle, files):
    from custom.core.bundle import make_parser, read_bundle_config

    root = ROOT / "bundles" / bundle
    parser = make_parser(read_bundle_config(root, files), root)
    net = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser["network_def"] if k != "_target_"}
    net["_target_"] = parser["network_def"]["_target_"]
    shared = {k: parser.get_parsed_content(k) for k in SHARED_SETTINGS if k in parser}
    return net, shared


@pytest.mark.parametrize("bundle,train,infer", PAIRS, ids=lambda v: "+".join(v) if isinstance(v, list) else v)
def test_train_and_inference_configs_agree(bundle, train, infer):
    """A change of architecture or preprocessing made in one config and not the other is caught here."""
    net_train, shared_train = _settings(bundle, train)
    net_infer, shared_infer = _settings(bundle, infer)
    # training-only switches of the network (memory savings) do not change its weights or outputs
    net_train.pop("gradient_checkpointing", None)
    # the mask refiner's abstention acts in eval mode only; training keeps it at 0 so that model selection is
    # unguarded, and the value for the shipped weights is chosen afterwards on their validation split
    net_train.pop("min_change", None), net_infer.pop("min_change", None)
    assert net_train == net_infer
    assert {k: shared_train.get(k) for k in shared_infer} == shared_infer


def test_one_mask_threshold():
    from custom.core.bundle import read_bundle_config
    from custom.mask_refiner.data import MASK_THRESHOLD

    root = ROOT / "bundles" / "mask_refiner_2d"
    for name in ("train.json", "inference.json"):
        assert read_bundle_config(root, name)["threshold"] == MASK_THRESHOLD, name
