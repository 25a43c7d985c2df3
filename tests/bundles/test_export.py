"""Standalone export: a reproducible zip that runs without the repository and gives the repository's result."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
from conftest import ROOT, run_cli

EXPORTABLE = ["mask_refiner_2d", "xray2ct_cascade_diffusion", "ct_detail_refinement"]
# always there with MONAI: the metadata states their versions in monai_version / pytorch_version / numpy_version
CORE = {"torch", "monai", "numpy"}


def _export(bundle, out_dir):
    proc = run_cli("export-bundle", ROOT / "bundles" / bundle, out_dir)
    assert proc.returncode == 0, proc.stderr
    version = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())["version"]
    path = out_dir / f"{bundle}_v{version}.zip"
    assert path.is_file() and proc.stdout.strip().endswith(path.name)
    return path


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_export_is_reproducible_and_complete(bundle, tmp_path):
    first, second = _export(bundle, tmp_path / "a"), _export(bundle, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes(), "two exports of the same tree differ"
    names = zipfile.ZipFile(first).namelist()
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE", "docs/README.md"):
        assert f"{bundle}/{rel}" in names
    for weights in (ROOT / "bundles" / bundle / "models").glob("*.pt"):  # every weights file the bundle ships
        assert f"{bundle}/models/{weights.name}" in names, weights.name
    if bundle == "xray2ct_cascade_diffusion":  # --stages 1-2 / 1-3 of the exported bundle need these
        assert {f"{bundle}/models/model_stage2.pt", f"{bundle}/models/model_stage3.pt"} <= set(names)
    assert f"{bundle}/configs/drr_geometry.json" in names  # read by custom.core.physics at run time
    assert f"{bundle}/custom/core/physics/projector.py" in names
    assert not [n for n in names if "__pycache__" in n or "/runs/" in n or n.endswith(".pyc")]


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_exported_code_imports_only_declared_packages(bundle, tmp_path):
    """Every third-party module the exported code imports is a package the bundle's metadata asks users to install."""
    meta = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    declared = {p.lower() for p in {**meta["required_packages_version"], **meta["optional_packages_version"]}} | CORE
    dists = importlib.metadata.packages_distributions()
    undeclared = {}
    with zipfile.ZipFile(_export(bundle, tmp_path)) as zf:
        for name in zf.namelist():
            if not name.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(zf.read(name))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    mods = [node.module]
                else:
                    continue
                for top in {m.split(".")[0] for m in mods}:
                    if top in sys.stdlib_module_names or top == "custom":
                        continue
                    packages = {d.lower() for d in dists.get(top, [top])}
                    if not packages & declared:
                        undeclared.setdefault(top, set()).add(name)
    assert not undeclared, f"imported but not in {bundle}'s metadata: {undeclared}"


def _isolated_env():
    """Only the installed third-party packages: no repository on the path, no editable install of ``custom``."""
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _refiner_case(tmp_path):
    from custom.mask_refiner.data import generate_source

    src = generate_source(tmp_path / "src", n_patients=1, n_controls=0, width=64, seed=5, heights=(70, 90))
    args = ["--image_path", src / "images" / "patient_000.png"]
    args += ["--probabilities_path", src / "patient_000_probabilities.npy"]
    return args, "patient_000_mask.png"


def _xray2ct_case(tmp_path):
    assert run_cli("phantoms", tmp_path / "ph", "--count", 1, "--size", 32, "--seed", 7).returncode == 0
    proc = run_cli("prepare", tmp_path / "ph", tmp_path / "prep", "--size", 32, "--split", "test", "--num_workers", 1)
    assert proc.returncode == 0, proc.stderr
    case = next((tmp_path / "prep" / "cases").iterdir())
    args = ["--frontal_path", case / "frontal.nii.gz", "--lateral_path", case / "lateral.nii.gz"]
    return args + ["--num_inference_steps", 2, "--num_samples", 1], "ct.nii.gz"


def _ct_refinement_case(tmp_path):
    assert run_cli("phantoms", tmp_path / "ph", "--count", 1, "--size", 64, "--seed", 9).returncode == 0
    proc = run_cli("prepare", tmp_path / "ph", tmp_path / "prep", "--size", 64, "--split", "test", "--num_workers", 1)
    assert proc.returncode == 0, proc.stderr
    return ["--dataset_dir", tmp_path / "prep"], "refined.nii.gz"


CASES = {
    "mask_refiner_2d": _refiner_case,
    "xray2ct_cascade_diffusion": _xray2ct_case,
    "ct_detail_refinement": _ct_refinement_case,
}


def _read(path):
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path))
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_exported_bundle_runs_standalone_like_the_repository(bundle, tmp_path):
    args, output = CASES[bundle](tmp_path)
    with zipfile.ZipFile(_export(bundle, tmp_path / "dist")) as zf:
        zf.extractall(tmp_path / "unzipped")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = {}
    for where, root, env, flags in (
        ("repository", ROOT / "bundles" / bundle, dict(os.environ, PYTHONPATH=str(ROOT)), []),
        ("export", tmp_path / "unzipped" / bundle, _isolated_env(), ["-S"]),  # -S: no site hooks, no editable finder
    ):
        out = tmp_path / f"out_{where}"
        cmd = [
            sys.executable,
            *flags,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            root / "configs" / "inference.json",
        ]
        cmd += ["--bundle_root", root, "--output_dir", out, *args]
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=elsewhere, env=env)
        assert proc.returncode == 0, f"{where}: {proc.stderr[-3000:]}"
        found = sorted(out.rglob(output))
        assert len(found) == 1, f"{where}: {output} not written; got {sorted(p.name for p in out.rglob('*'))}"
        results[where] = _read(found[0])
    # two separate processes with the same seed: the same output, bit for bit (DDIM sampling is deterministic)
    if isinstance(results["export"], tuple):
        np.testing.assert_array_equal(results["export"][0], results["repository"][0])
        np.testing.assert_array_equal(results["export"][1], results["repository"][1])
    else:
        np.testing.assert_array_equal(results["export"], results["repository"])


def test_export_rejects_a_folder_that_is_not_a_bundle(tmp_path):
    proc = run_cli("export-bundle", tmp_path, tmp_path / "dist")
    assert proc.returncode == 2 and "not a bundle folder" in proc.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
