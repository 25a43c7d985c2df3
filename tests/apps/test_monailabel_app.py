"""The MONAI Label app (apps/monailabel) in-process with FastAPI's TestClient and as a real server on loopback.

The bundles are temporary copies of the repository's configs with tiny networks and freshly initialised weights
saved as models/model.pt (plus a stand-in ct_detail_refinement bundle with the interface the app expects), so
every request runs the real tasks in seconds. Data are real NIfTI files: the project's demo phantom and its DRRs,
and a generated 2D image with a coarse probability map. Needs monailabel (apps/monailabel/requirements.txt).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monailabel")

from fastapi.testclient import TestClient  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "apps" / "monailabel"
TINY_CASCADE = {
    "volume_size": 16,
    "xray_size": 16,
    "token_grid": 4,
    "channels": [8, 8, 8],
    "hidden_size": 24,
    "vit_depth": 1,
    "num_heads": 2,
    "num_inference_steps": 2,
    "num_samples": 2,
}
# the cascade's later stages keep their real networks (128^3, 256^3 on 64^3 tiles) with fresh weights, sampled as
# briefly as they can be: one DDIM step, one sample, tiles without overlap (64 for stage 3 instead of 125)
TINY_LATER_STAGES = {"num_inference_steps": 1, "num_samples": 1, "overlap": 0.0}
TINY_REFINER = {"channels": [4, 8, 8, 8]}
CT_REFINER_CONFIG = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "window": [-200.0, 200.0],
    "network_def": {
        "_target_": "torch.nn.Conv3d",
        "in_channels": 1,
        "out_channels": 1,
        "kernel_size": 3,
        "padding": 1,
    },
}
REFINER_SHAPE = (37, 29)  # (U, V); not a multiple of the U-Net's stride, so any resizing would show
REFINER_AFFINE = np.array([[0.7, 0, 0, -12.0], [0, 0.9, 0, 5.0], [0, 0, 1, 0], [0, 0, 0, 1]])


def _edit_json(path: Path, changes: dict) -> dict:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=4))
    return cfg


def _save_fresh_weights(bundle: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    for p in net.parameters():  # a random but non-trivial network: outputs must depend on the inputs
        torch.nn.init.normal_(p, std=0.05)
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")


def _save_fresh_stage_weights(bundle: Path) -> None:
    """Fresh weights for the cascade's stages 2 and 3, at their config's ``ckpt_path`` (the shipped file names)."""
    from custom.xray2ct.patch_network import PatchDenoiser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for n in (2, 3):
        torch.manual_seed(n)
        net = PatchDenoiser(**parser.get_parsed_content(f"stage{n}#network"))
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.05)
        torch.save(net.state_dict(), parser.get_parsed_content(f"stage{n}#ckpt_path"))


def _tiny_bundles(dest: Path, with_weights=("mask_refiner_2d", "xray2ct_cascade_diffusion", "ct_detail_refinement")):
    for name in ("mask_refiner_2d", "xray2ct_cascade_diffusion"):
        shutil.copytree(ROOT / "bundles" / name / "configs", dest / name / "configs")
    _edit_json(dest / "mask_refiner_2d" / "configs" / "inference.json", TINY_REFINER)
    _edit_json(dest / "mask_refiner_2d" / "configs" / "train.json", TINY_REFINER)
    cascade = dest / "xray2ct_cascade_diffusion" / "configs" / "inference.json"
    cfg = _edit_json(cascade, TINY_CASCADE)
    _edit_json(cascade, {f"stage{n}": dict(cfg[f"stage{n}"], **TINY_LATER_STAGES) for n in (2, 3)})
    (dest / "ct_detail_refinement" / "configs").mkdir(parents=True)
    (dest / "ct_detail_refinement" / "configs" / "inference.json").write_text(json.dumps(CT_REFINER_CONFIG))
    for name in with_weights:
        _save_fresh_weights(dest / name)
    if "xray2ct_cascade_diffusion" in with_weights:
        _save_fresh_stage_weights(dest / "xray2ct_cascade_diffusion")
    return dest


def _write_refiner_case(folder: Path, seed: int, control: bool = False) -> dict:
    from custom.mask_refiner.data import synth_case

    img, mask, prob, _ = synth_case(np.random.default_rng(seed), REFINER_SHAPE[1], REFINER_SHAPE[0], control)
    paths = {}
    for key, arr, dtype in (("image", img * 1000, np.float32), ("final", mask, np.uint8), ("coarse", prob, np.float32)):
        path = folder / f"{key}_{seed}.nii.gz"
        nib.save(nib.Nifti1Image(arr.T.astype(dtype), REFINER_AFFINE), str(path))  # rows/cols -> (U, V)
        paths[key] = path
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny bundles with weights, a prepared phantom (CT + two DRRs) and three refiner images."""
    tmp = tmp_path_factory.mktemp("monailabel")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (
        ["phantoms", tmp / "ph", "--count", 1, "--size", 16, "--seed", 100000],
        ["prepare", tmp / "ph", tmp / "prep", "--size", 16, "--split", "test", "--num_workers", 1],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "custom", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    case = next((tmp / "prep" / "cases").iterdir())
    (tmp / "refiner").mkdir()
    return {
        "tmp": tmp,
        "bundles": _tiny_bundles(tmp / "bundles"),
        "ct": case / "ct.nii.gz",
        "frontal": case / "frontal.nii.gz",
        "lateral": case / "lateral.nii.gz",
        "refiner": [_write_refiner_case(tmp / "refiner", s, control=(s == 2)) for s in range(3)],
    }


def _put_image(client, image_id, path):
    with open(path, "rb") as f:
        r = client.put(f"/datastore/image?image={image_id}", files={"file": (Path(path).name, f)})
    assert r.status_code == 200, r.text


def _put_label(client, image_id, tag, path):
    with open(path, "rb") as f:
        r = client.put(f"/datastore/label?image={image_id}&tag={tag}", files={"label": (Path(path).name, f)})
    assert r.status_code == 200, r.text


def _infer(client, model, image="", params=None, file=None, label=None):
    files = {}
    for key, path in (("file", file), ("label", label)):
        if path is not None:
            files[key] = (Path(path).name, open(path, "rb").read())
    return client.post(
        f"/infer/{model}?image={image}&output=image", data={"params": json.dumps(params or {})}, files=files or None
    )


def _nifti(content: bytes) -> nib.Nifti1Image:
    img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(content))
    return img


@pytest.fixture(scope="module")
def client(data):
    """The app in-process: MONAI Label's FastAPI app driven by TestClient over a fresh studies folder."""
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    studies = data["tmp"] / "studies_inprocess"
    settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = {"bundles": str(data["bundles"]), "model_dir": str(data["tmp"] / "model_inproc")}
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    settings.MONAI_LABEL_SESSION_PATH = str(data["tmp"] / "sessions")
    clear_cache()
    from monailabel.app import app

    with TestClient(app) as c:
        _put_image(c, "frontal", data["frontal"])
        _put_image(c, "lateral", data["lateral"])
        _put_image(c, "chest", data["ct"])
        for k, case in enumerate(data["refiner"]):
            _put_image(c, f"slice{k}", case["image"])
            _put_label(c, f"slice{k}", "coarse", case["coarse"])
        yield c
    clear_cache()


def test_info_lists_the_three_models_with_types_dimensions_and_labels(client):
    info = client.get("/info/").json()
    models = info["models"]
    assert set(models) == {"mask_refiner", "xray2ct", "ct_refiner"}
    assert (models["mask_refiner"]["type"], models["mask_refiner"]["dimension"]) == ("segmentation", 2)
    assert models["mask_refiner"]["labels"] == {"lesion": 1}
    assert (models["xray2ct"]["type"], models["xray2ct"]["dimension"]) == ("others", 2)
    assert (models["ct_refiner"]["type"], models["ct_refiner"]["dimension"]) == ("others", 3)
    assert models["xray2ct"]["labels"] == [] and models["ct_refiner"]["labels"] == []
    assert set(info["trainers"]) == {"mask_refiner"}
    assert info["labels"] == ["lesion"]


def test_mask_refiner_keeps_the_image_grid_with_uploaded_or_stored_probabilities(client, data):
    case = data["refiner"][0]
    stored = _infer(client, "mask_refiner", "slice0")
    assert stored.status_code == 200, stored.text
    uploaded = _infer(client, "mask_refiner", file=case["image"], label=case["coarse"])
    assert uploaded.status_code == 200, uploaded.text
    for response in (stored, uploaded):
        label = _nifti(response.content)
        assert label.shape == REFINER_SHAPE
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(label.affine, REFINER_AFFINE)
        values = np.asarray(label.dataobj)
        assert set(np.unique(values)) <= {0, 1} and values.any()
    assert np.array_equal(np.asarray(_nifti(stored.content).dataobj), np.asarray(_nifti(uploaded.content).dataobj))
    # the refinement is the network's: it follows the coarse map, whose 0.5 level set is close to it
    coarse = np.asarray(nib.load(case["coarse"]).dataobj) > 0.5
    refined = np.asarray(_nifti(stored.content).dataobj) > 0
    assert (coarse & refined).sum() * 2 / (coarse.sum() + refined.sum()) > 0.5


def test_mask_refiner_on_a_png_with_the_bundles_npy_probabilities_returns_a_png_of_the_same_size(client, data):
    from PIL import Image

    from custom.mask_refiner.data import synth_case

    img, _, prob, _ = synth_case(np.random.default_rng(5), 23, 31, False)  # 23 rows, 31 columns
    png, npy = data["tmp"] / "slice.png", data["tmp"] / "slice_probabilities.npy"
    Image.fromarray((img * 65535).astype(np.uint16)).save(png)
    np.save(npy, np.stack([1 - prob, prob]))  # the bundle's (2, rows, cols) softmax
    r = _infer(client, "mask_refiner", file=png, label=npy)
    assert r.status_code == 200, r.text
    with Image.open(io.BytesIO(r.content)) as out:
        mask = np.asarray(out)
    assert mask.shape == (23, 31) and set(np.unique(mask)) <= {0, 1}
    assert ((mask > 0) & (prob > 0.5)).sum() * 2 / ((mask > 0).sum() + (prob > 0.5).sum()) > 0.5


def test_xray2ct_writes_a_ct_in_hu_on_the_bundle_cube_and_registers_it(client):
    r = _infer(client, "xray2ct", "frontal", {"lateral": "lateral", "ct_id": "recon"})
    assert r.status_code == 200, r.text
    ct = _nifti(r.content)
    assert ct.shape == (16, 16, 16) and ct.get_data_dtype() == np.float32
    from custom.core.transforms import cube_affine

    np.testing.assert_allclose(ct.affine, cube_affine(16, 320.0), atol=1e-4)
    np.testing.assert_allclose(ct.header.get_zooms(), (20.0, 20.0, 20.0))
    hu = np.asarray(ct.dataobj)
    assert hu.min() >= -200 and hu.max() <= 200 and hu.std() > 0
    store = client.get("/datastore/?output=all").json()["objects"]
    assert {"recon", "recon_uncertainty"} <= set(store)
    assert store["recon"]["image"]["info"]["lateral"] == "lateral"
    stored = client.get("/datastore/image?image=recon")
    assert stored.status_code == 200 and np.array_equal(np.asarray(_nifti(stored.content).dataobj), hu)
    unc = _nifti(client.get("/datastore/image?image=recon_uncertainty").content)
    assert unc.shape == (16, 16, 16) and np.asarray(unc.dataobj).min() >= 0 and np.asarray(unc.dataobj).max() > 0


def test_ct_refiner_returns_hu_on_the_input_grid_and_registers_it(client, data):
    r = _infer(client, "ct_refiner", "chest")
    assert r.status_code == 200, r.text
    out, src = _nifti(r.content), nib.load(data["ct"])
    assert out.shape == src.shape and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    hu = np.asarray(out.dataobj)
    assert hu.min() >= -200 and hu.max() <= 200 and hu.std() > 0
    assert "chest_refined" in client.get("/datastore/?output=all").json()["objects"]


@pytest.mark.parametrize(
    "model, image, params, upload, status, words",
    [
        ("xray2ct", "frontal", {}, None, 400, "lateral"),
        ("xray2ct", "frontal", {"lateral": "nope"}, None, 404, "nope"),
        ("xray2ct", "chest", {"lateral": "lateral"}, None, 422, "2D"),
        ("xray2ct", "frontal", {"lateral": "lateral", "num_inference_steps": "many"}, None, 400, "integer"),
        ("xray2ct", "frontal", {"lateral": "lateral", "stages": "2-3"}, None, 400, "stages must be one of 1, 1-2, 1-3"),
        ("mask_refiner", "chest", {}, None, 422, "2D"),
        ("mask_refiner", "frontal", {}, None, 400, "coarse"),
        ("ct_refiner", "frontal", {}, None, 422, "CT"),
        ("segment_everything", "frontal", {}, None, 404, "segment_everything"),
        ("mask_refiner", "missing_id", {}, None, 404, "missing_id"),
        ("xray2ct", "", {"lateral": "lateral"}, "corrupt", 422, "uploaded image"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, data, model, image, params, upload, status, words):
    file = None
    if upload == "corrupt":
        file = data["tmp"] / "corrupt.nii.gz"
        file.write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    r = _infer(client, model, image, params, file=file)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail
    assert str(data["tmp"]) not in detail and "/tmp" not in detail  # no server paths in messages
    assert client.get("/info/").status_code == 200  # still serving


def test_training_from_datastore_labels_publishes_weights_the_infer_task_uses(client, data, caplog):
    before = _infer(client, "mask_refiner", "slice1")
    assert before.status_code == 200 and before.headers
    # a fourth image, with a lesion: the run's split (seeded) holds it out as its one validation image
    cases = data["refiner"] + [_write_refiner_case(data["tmp"] / "refiner", 3)]
    _put_image(client, "slice3", cases[3]["image"])
    _put_label(client, "slice3", "coarse", cases[3]["coarse"])
    for k, case in enumerate(cases):
        _put_label(client, f"slice{k}", "final", case["final"])
    # training starts from the weights served: here a refiner that grows every mask by a ring (its head's bias), so
    # that the safeguard's choice rests on masks the refiner really changes
    published = data["tmp"] / "model_inproc" / "mask_refiner_2d" / "model.pt"
    bundle_state = torch.load(data["bundles"] / "mask_refiner_2d" / "models" / "model.pt", weights_only=True)
    published.parent.mkdir(parents=True)
    torch.save(dict(bundle_state, **{"head.bias": bundle_state["head.bias"] + 1.0}), published)
    r = client.post("/train/mask_refiner?run_sync=true", json={"max_epochs": 1, "batch_size": 2})
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["images"] == 4 and stats["train"] == 3 and stats["val"] == 1 and stats["epochs"] == 1
    assert 0 <= stats["best_val_dice"] <= 1
    state = torch.load(published, weights_only=True)
    assert any(not torch.equal(state[k], bundle_state[k]) for k in bundle_state)  # it trained
    after = client.post("/infer/mask_refiner?image=slice1&output=json", data={"params": "{}"})
    assert after.status_code == 200 and after.json()["weights"] == "fine-tuned"
    assert client.post("/train/nothing?run_sync=true", json={}).status_code == 404
    with caplog.at_level(logging.WARNING):
        _check_published_min_change(client, data, cases, published, stats)
    # each fallback in the log once, with its reason: a record of other weights (twice), unreadable, absent
    fallbacks = [r.getMessage() for r in caplog.records if "served with the bundle's min_change 0.04" in r.getMessage()]
    assert len(fallbacks) == 4, fallbacks
    assert "model.json: it was chosen for other weights (SHA-256 000000000000..." in fallbacks[0]
    assert "model.json cannot be read (JSONDecodeError)" in fallbacks[1]
    assert "there is no model.json next to model.pt" in fallbacks[2]
    assert f"it was chosen for other weights (SHA-256 {stats['weights_sha256'][:12]}..." in fallbacks[3]


def _refiner_json(client, image_id: str) -> dict:
    r = client.post(f"/infer/mask_refiner?image={image_id}&output=json", data={"params": "{}"})
    assert r.status_code == 200, r.text
    return r.json()


def _check_published_min_change(client, data, cases: list, published: Path, stats: dict) -> None:
    """The safeguard's value published with fine-tuned weights: chosen on the run's single validation image for
    those very weights, applied by the infer task to them only, and followed when either file is replaced."""
    from custom.mask_refiner.data import dice, make_channels
    from custom.mask_refiner.network import RefinerUNet
    from custom.mask_refiner.safeguard import choose_min_change, mask_change

    sidecar = published.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sha = hashlib.sha256(published.read_bytes()).hexdigest()
    assert record["weights_sha256"] == sha == stats["weights_sha256"]
    assert 0 <= record["min_change"] <= 1 and record["min_change"] == stats["min_change"]
    assert record["selection"] == stats["min_change_validation"] and record["validation_images"] == stats["val"] == 1
    assert stats["min_change_published"] == "mask_refiner_2d/model.json"
    # the rows again, from the published weights and the validation images' own files, not the trainer's dataset
    net = RefinerUNet(channels=TINY_REFINER["channels"], min_change=0.0)
    net.load_state_dict(torch.load(published, weights_only=True))
    net.eval()
    rows = []
    for image_id in record["validation_ids"]:
        case = cases[int(image_id.removeprefix("slice"))]
        img, final, prob = (
            np.asarray(nib.load(case[k]).dataobj, dtype=np.float32).T for k in ("image", "final", "coarse")
        )
        with torch.no_grad():
            logits = net(torch.from_numpy(make_channels(prob, img))[None])[:, 0]
        refined = torch.sigmoid(logits[0]).numpy() > 0.5
        rows.append(
            {
                "coarse_dice": dice(prob > 0.5, final > 0),
                "refined_dice": dice(refined, final > 0),
                "mask_change": float(mask_change(torch.from_numpy(prob)[None], logits)[0]),
            }
        )
    again = choose_min_change(rows)
    assert again["min_change"] == record["min_change"]
    for key in ("coarse_dice", "refined_dice", "guarded_dice", "abstained"):
        assert again[key] == pytest.approx(record["selection"][key], abs=1e-6), key
    params = _refiner_json(client, "slice1")
    assert (params["min_change"], params["min_change_from"]) == (record["min_change"], "fine-tuned validation")
    assert "min_change_warning" not in params

    case = data["refiner"][1]
    coarse = np.asarray(nib.load(case["coarse"]).dataobj) > 0.5
    bundle_weights = data["bundles"] / "mask_refiner_2d" / "models" / "model.pt"
    original, weights = sidecar.read_text(), published.read_bytes()
    try:
        # the recorded value reaches the network: with 0 it changes the coarse mask, with 1 it abstains
        masks = {}
        for value in (0.0, 1.0):
            sidecar.write_text(json.dumps(dict(record, min_change=value)))
            r = _infer(client, "mask_refiner", "slice1")
            assert r.status_code == 200, r.text
            masks[value] = np.asarray(_nifti(r.content).dataobj) > 0
        assert not np.array_equal(masks[0.0], coarse) and np.array_equal(masks[1.0], coarse)
        # a record of other weights is ignored: the bundle's value (inference.json's 0.04), and the answer says why
        sidecar.write_text(json.dumps(dict(record, min_change=1.0, weights_sha256="0" * 64)))
        params = _refiner_json(client, "slice1")
        assert (params["weights"], params["min_change"], params["min_change_from"]) == ("fine-tuned", 0.04, "bundle")
        assert "other weights" in params["min_change_warning"] and str(data["tmp"]) not in params["min_change_warning"]
        sidecar.write_text("{not json")
        assert _refiner_json(client, "slice1")["min_change_from"] == "bundle"
        sidecar.unlink()
        params = _refiner_json(client, "slice1")
        assert params["min_change_from"] == "bundle" and "no model.json" in params["min_change_warning"]
        # the record back: the value follows it without a restart
        sidecar.write_text(original)
        assert _refiner_json(client, "slice1")["min_change"] == record["min_change"]
        # other weights put in place by rename, with the record of the old ones: the bundle's value again
        shutil.copyfile(bundle_weights, published.with_name("replacement.pt"))
        published.with_name("replacement.pt").replace(published)
        params = _refiner_json(client, "slice1")
        assert (params["weights"], params["min_change"], params["min_change_from"]) == ("fine-tuned", 0.04, "bundle")
    finally:
        sidecar.write_text(original)
        published.write_bytes(weights)


def test_incomplete_bundles_are_left_out_and_start_up_touches_no_network(data, tmp_path, caplog, monkeypatch):
    """No weights (the cascade until it is trained) or no folder (ct_detail_refinement until it lands): not listed."""
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    bundles = _tiny_bundles(tmp_path / "bundles", with_weights=("mask_refiner_2d",))
    shutil.rmtree(bundles / "ct_detail_refinement")

    def no_network(sock, address):
        raise AssertionError(f"the app tried to connect to {address} at start-up")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    clear_cache()
    with caplog.at_level(logging.WARNING):
        app = app_instance(str(APP_DIR), str(tmp_path / "studies"), {"bundles": str(bundles)})
    clear_cache()
    assert set(app.info()["models"]) == {"mask_refiner"}
    log = caplog.text
    assert "'xray2ct' is not served" in log and "no trained weights" in log
    assert "'ct_refiner' is not served" in log and "does not exist" in log


UPSAMPLE_2X = {
    "_target_": "torch.nn.ConvTranspose3d",
    "in_channels": 1,
    "out_channels": 1,
    "kernel_size": 2,
    "stride": 2,
}


def _ct_refiner_task(tmp_path, network_def: dict, **config):
    """CTDetailInfer over a bundle made of CT_REFINER_CONFIG with ``network_def``, fresh weights and a datastore."""
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.infers import CTDetailInfer
    finally:
        sys.path.remove(str(APP_DIR))
    from monailabel.datastore.local import LocalDatastore

    bundle = tmp_path / "ct_detail_refinement"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(
        json.dumps(dict(CT_REFINER_CONFIG, network_def=network_def, **config))
    )
    _save_fresh_weights(bundle)
    store = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"])
    return CTDetailInfer(bundle, store, "cpu", [bundle / "models" / "model.pt"]), store


def test_an_upsampling_ct_refiner_gets_a_finer_affine_over_the_same_field_of_view(data, tmp_path):
    """The colleague's bundle may upsample (super-resolution): the result must cover the input's field of view."""
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.infers import output_affine
    finally:
        sys.path.remove(str(APP_DIR))
    task, store = _ct_refiner_task(tmp_path, UPSAMPLE_2X)
    path, params = task({"image": str(data["ct"]), "refined_id": "fine"})
    out, src = nib.load(path), nib.load(data["ct"])
    assert out.shape == tuple(2 * s for s in src.shape) and params["shape"] == list(out.shape)
    np.testing.assert_allclose(out.header.get_zooms(), np.array(src.header.get_zooms()) / 2, rtol=1e-5)
    for corner_in, corner_out in (([-0.5] * 3, [-0.5] * 3), (np.array(src.shape) - 0.5, np.array(out.shape) - 0.5)):
        np.testing.assert_allclose(
            out.affine @ np.append(corner_out, 1), src.affine @ np.append(corner_in, 1), atol=1e-4
        )
    assert store.get_image_uri("fine")
    with pytest.raises(RuntimeError, match="whole-number"):
        output_affine(np.eye(4), (16, 16, 16), (1, 1, 24, 24, 24))


def test_a_ct_refiner_trained_on_a_grid_gets_any_ct_resampled_onto_it(data, tmp_path):
    """A clinical-looking CT (anisotropic voxels, off-centre, not a cube) is put on the bundle's coarse grid first;
    the result covers the bundle's cube around the CT's own centre, so it overlays the input in a viewer."""
    task, _ = _ct_refiner_task(tmp_path, UPSAMPLE_2X, volume_size=16, scale_factor=2, cube_mm=320.0)
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(14), indexing="ij")
    hu = np.where((x - 20) ** 2 + (y - 18) ** 2 + ((z - 7) * 2.5) ** 2 < 100, 60.0, -900.0).astype(np.float32)
    affine = np.diag([6.0, 6.0, 15.0, 1.0])
    affine[:3, 3] = [40.0, -120.0, -90.0]
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "scan.nii.gz"))
    path, params = task({"image": str(tmp_path / "scan.nii.gz"), "refined_id": "scan_refined"})
    out = nib.load(path)
    assert out.shape == (16, 16, 16) and params["shape"] == [16, 16, 16]
    np.testing.assert_allclose(out.header.get_zooms(), [20.0] * 3, rtol=1e-4)  # 320 mm / 16
    centre_in = affine @ np.append((np.array(hu.shape) - 1) / 2, 1)
    centre_out = out.affine @ np.append([7.5] * 3, 1)
    np.testing.assert_allclose(centre_out[:3], centre_in[:3], atol=1.5)  # within the 1 mm resampling grid


VIEWER_ORIGIN = "http://localhost:3000"  # the one browser origin the test server allows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data):
    """``monailabel start_server`` in a subprocess on a free loopback port; stopped by its PID afterwards."""
    port = _free_port()
    studies = data["tmp"] / "studies_server"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MONAI_LABEL_SESSION_PATH=str(data["tmp"] / "sessions_server"),
        TMPDIR=str(data["tmp"] / "server_tmp"),  # where monailabel's endpoints copy uploads
    )
    (data["tmp"] / "server_tmp").mkdir()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "bundles", str(data["bundles"])]
    cmd += ["--conf", "model_dir", str(data["tmp"] / "model_server"), "--conf", "cors_origins", VIEWER_ORIGIN]
    with serving(cmd, env, data["tmp"], data["tmp"] / "server.log", port) as url:
        yield url


@contextlib.contextmanager
def serving(cmd: list, env: dict, cwd, log_path, port: int):
    """Start ``monailabel start_server`` (``cmd``), wait until its ``/info/`` answers on ``port``, yield its URL,
    and stop it afterwards; its output goes to ``log_path``, whose end is shown if it dies while starting."""
    import requests

    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            deadline = time.time() + 90
            while True:
                assert proc.poll() is None, Path(log_path).read_text()[-3000:]
                try:
                    if requests.get(f"{url}/info/", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.time() < deadline, "the server did not answer within 90 s"
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_real_server_through_the_monailabel_client(server, data, tmp_path):
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    client = MONAILabelClient(server, tmpdir=str(tmp_path))
    info = client.info()
    assert set(info["models"]) == {"mask_refiner", "xray2ct", "ct_refiner"}
    assert info["models"]["mask_refiner"]["type"] == "segmentation"
    client.upload_image(str(data["frontal"]), "frontal")
    client.upload_image(str(data["lateral"]), "lateral")
    case = data["refiner"][1]
    client.upload_image(str(case["image"]), "slice")

    mask_file, params = client.infer("mask_refiner", "slice", {}, label_in=str(case["coarse"]))
    mask = nib.load(mask_file)
    assert mask.shape == REFINER_SHAPE and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, REFINER_AFFINE)
    assert params["foreground_pixels"] == int(np.asarray(mask.dataobj).sum())

    ct_file, params = client.infer("xray2ct", "frontal", {"lateral": "lateral"})
    ct = nib.load(ct_file)
    assert ct.shape == (16, 16, 16) and ct.get_data_dtype() == np.float32
    np.testing.assert_allclose(ct.header.get_zooms(), (20.0, 20.0, 20.0))
    assert params["ct_image_id"] == "frontal_ct"
    assert {"frontal_ct", "frontal_ct_uncertainty"} <= set(client.datastore()["objects"])

    with pytest.raises(MONAILabelClientException) as e:
        client.infer("xray2ct", "frontal", {})
    assert "Status: 400" in e.value.msg and "lateral" in e.value.msg
    assert client.info()["name"] == "X-ray to CT bundles"  # still serving


def test_real_server_trains_in_the_background_from_saved_labels(server, data, tmp_path):
    """POST /train runs MONAI Label's background task (a separate process) on the labels saved in the datastore."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server, tmpdir=str(tmp_path))
    for k, case in enumerate(data["refiner"]):
        client.upload_image(str(case["image"]), f"train{k}")
        client.save_label(f"train{k}", str(case["final"]), tag="final")
        client.save_label(f"train{k}", str(case["coarse"]), tag="coarse")
    client.train_start("mask_refiner", {"max_epochs": 1, "batch_size": 2})
    deadline = time.time() + 120
    while True:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR"):
            break
        assert time.time() < deadline, status
        time.sleep(1)
    assert status["status"] == "DONE", status
    published = data["tmp"] / "model_server" / "mask_refiner_2d" / "model.pt"
    assert published.is_file()
    # the background job published the safeguard's value for its weights; the server process applies it
    record = json.loads(published.with_suffix(".json").read_text())
    assert record["weights_sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
    assert 0 <= record["min_change"] <= 1 and record["validation_images"] == 1
    _, params = client.infer("mask_refiner", "train0", {"coarse_tag": "coarse"})
    assert params["weights"] == "fine-tuned"
    assert (params["min_change"], params["min_change_from"]) == (record["min_change"], "fine-tuned validation")


def test_real_server_bad_requests_over_http(server, data):
    import requests

    r = requests.post(f"{server}/infer/unknown?image=x", data={"params": "{}"}, timeout=30)
    assert r.status_code == 404 and "unknown" in r.json()["detail"]
    with open(data["ct"], "rb") as f:
        r = requests.post(
            f"{server}/infer/xray2ct",
            data={"params": json.dumps({"lateral": "lateral"})},
            files={"file": ("chest.nii.gz", f)},
            timeout=60,
        )
    assert r.status_code == 422 and "2D" in r.json()["detail"], r.text
    r = requests.post(
        f"{server}/infer/mask_refiner",
        data={"params": "{}"},
        files={"file": ("x.png", io.BytesIO(b"\x89PNG truncated")), "label": ("p.png", io.BytesIO(b"junk"))},
        timeout=30,
    )
    assert r.status_code == 422 and "uploaded image" in r.json()["detail"], r.text
    assert requests.get(f"{server}/info/", timeout=10).status_code == 200


def test_real_server_keeps_answering_during_inference_and_serves_concurrent_requests(server, data):
    """Inference runs off the event loop: /info/ and the datastore answer within a second while two X-ray -> CT
    requests (about 2 s each here) run at once, and each of the two gets the CT of its own seed."""
    import threading

    import requests

    for image_id, key in (("busy_pa", "frontal"), ("busy_lat", "lateral")):
        with open(data[key], "rb") as f:
            assert requests.put(f"{server}/datastore/image?image={image_id}", files={"file": f}, timeout=30).ok
    slow = {"lateral": "busy_lat", "num_inference_steps": 40, "num_samples": 1}
    results = {}

    def infer(seed, ct_id):
        params = json.dumps(dict(slow, seed=seed, ct_id=ct_id))
        r = requests.post(f"{server}/infer/xray2ct?image=busy_pa&output=image", data={"params": params}, timeout=300)
        results[ct_id] = (r.status_code, r.content)

    threads = [threading.Thread(target=infer, args=(seed, f"busy_ct_{seed}")) for seed in (1, 2)]
    for t in threads:
        t.start()
    latencies = []
    while any(t.is_alive() for t in threads):
        for path in ("/info/", "/datastore/?output=stats"):
            start = time.time()
            assert requests.get(f"{server}{path}", timeout=30).status_code == 200
            latencies.append((path, time.time() - start))
        time.sleep(0.1)
    for t in threads:
        t.join()
    print(f"answers during inference: {len(latencies)}, slowest {max(s for _, s in latencies):.3f} s")
    assert len(latencies) >= 10, latencies  # the requests were answered while inference ran, not after it
    assert max(s for _, s in latencies) < 1.0, latencies
    assert {k: s for k, (s, _) in results.items()} == {"busy_ct_1": 200, "busy_ct_2": 200}
    one, two = (np.asarray(_nifti(results[f"busy_ct_{s}"][1]).dataobj) for s in (1, 2))
    assert not np.array_equal(one, two)
    infer(1, "busy_ct_1_alone")  # the same seed alone: the concurrent answer was this request's own CT
    assert results["busy_ct_1_alone"][0] == 200
    np.testing.assert_array_equal(np.asarray(_nifti(results["busy_ct_1_alone"][1]).dataobj), one)


def test_real_server_chains_the_cascade_to_stage_3_on_request_and_refuses_stages_that_do_not_exist(server, data):
    """``stages`` "1-3" returns stage 3's 256^3 CT (1.25 mm voxels over the 320 mm cube), stored with its uncertainty
    map, the stages recorded in the answer and in the datastore; "2-3" is a 400 that lists what may be asked for."""
    import requests
    from monailabel.client import MONAILabelClient

    from custom.core.transforms import cube_affine

    info = requests.get(f"{server}/info/", timeout=30).json()
    assert info["models"]["xray2ct"]["config"]["stages"] == ""  # clients see the parameter; empty: the bundle's
    for image_id, key in (("chain_pa", "frontal"), ("chain_lat", "lateral")):
        with open(data[key], "rb") as f:
            assert requests.put(f"{server}/datastore/image?image={image_id}", files={"file": f}, timeout=30).ok
    (data["tmp"] / "client_chain").mkdir()
    client = MONAILabelClient(server, tmpdir=str(data["tmp"] / "client_chain"))
    request = {"lateral": "chain_lat", "stages": "1-3", "num_inference_steps": 1, "num_samples": 1}
    ct_file, params = client.infer("xray2ct", "chain_pa", request)
    ct = nib.load(ct_file)
    assert ct.shape == (256, 256, 256) and ct.get_data_dtype() == np.float32
    np.testing.assert_allclose(ct.affine, cube_affine(256, 320.0), atol=1e-4)
    np.testing.assert_allclose(ct.header.get_zooms(), (1.25, 1.25, 1.25))
    hu = np.asarray(ct.dataobj)
    assert np.isfinite(hu).all() and hu.min() >= -200 and hu.max() <= 200 and hu.std() > 0
    assert params["stages"] == "1-3" and params["shape"] == [256] * 3 and params["voxel_spacing_mm"] == 1.25
    assert params["stage_shapes"] == [[16] * 3, [128] * 3, [256] * 3]  # the tiny stage 1, then the real stages
    store = requests.get(f"{server}/datastore/?output=all", timeout=30).json()["objects"]
    assert store["chain_pa_ct"]["image"]["info"]["stages"] == "1-3"
    unc = _nifti(requests.get(f"{server}/datastore/image?image=chain_pa_ct_uncertainty", timeout=60).content)
    assert unc.shape == (256, 256, 256)

    r = requests.post(
        f"{server}/infer/xray2ct?image=chain_pa&output=image",
        data={"params": json.dumps(dict(request, stages="2-3", ct_id="never_written"))},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "stages must be one of 1, 1-2, 1-3" in detail and "'2-3'" in detail, detail
    assert "never_written" not in requests.get(f"{server}/datastore/?output=all", timeout=30).json()["objects"]
    assert requests.get(f"{server}/info/", timeout=10).status_code == 200  # still serving


def test_stages_whose_weights_the_bundle_lacks_are_a_400_that_names_no_server_path(data, tmp_path):
    """A bundle with stage 2's weights but not stage 3's (a deployment that copied only some): "1-3" is refused
    before any file is read or network built, and says which stages can be run; "1-2" is not refused."""
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.infers import XRayToCTInfer
    finally:
        sys.path.remove(str(APP_DIR))
    from fastapi import HTTPException
    from monailabel.datastore.local import LocalDatastore

    bundles = _tiny_bundles(tmp_path / "bundles", with_weights=("xray2ct_cascade_diffusion",))
    bundle = bundles / "xray2ct_cascade_diffusion"
    (bundle / "models" / "model_stage3.pt").unlink()
    store = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"])
    task = XRayToCTInfer(bundle, store, "cpu", [bundle / "models" / "model.pt"])
    with pytest.raises(HTTPException) as e:
        task({"image": str(data["frontal"]), "lateral": "nope", "stages": "1-3"})
    assert e.value.status_code == 400
    assert "stage 3 (models/model_stage3.pt)" in e.value.detail and "'1' to '1-2'" in e.value.detail
    assert str(tmp_path) not in e.value.detail
    with pytest.raises(HTTPException) as e:  # past the stage check: the lateral id is looked up next
        task({"image": str(data["frontal"]), "lateral": "nope", "stages": "1-2"})
    assert e.value.status_code == 404 and "nope" in e.value.detail


# stages 2 and 3 at toy sizes for the tests that call the task object directly several times (the real sizes take
# about a minute per chain on two CPU cores)
TOY_LATER_NETWORK = {"lift_grid": 8, "channels": [8, 8, 8], "hidden_size": 24, "vit_depth": 1, "num_heads": 2}
TOY_LATER_STAGES = {2: {"volume_size": 24, "roi_size": 16}, 3: {"volume_size": 32, "roi_size": 16}}


def _toy_chain_task(tmp_path, data):
    """An xray2ct task over a bundle whose stages 2 and 3 are toy networks with fresh weights, and a datastore
    holding the phantom's lateral DRR as ``lat``."""
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.infers import XRayToCTInfer
    finally:
        sys.path.remove(str(APP_DIR))
    from monailabel.datastore.local import LocalDatastore

    bundle = _tiny_bundles(tmp_path / "bundles", with_weights=())
    bundle = bundle / "xray2ct_cascade_diffusion"
    config = bundle / "configs" / "inference.json"
    cfg = json.loads(config.read_text())
    toy = {}
    for n, size in TOY_LATER_STAGES.items():
        network = dict(cfg[f"stage{n}"]["network"], **TOY_LATER_NETWORK, volume_size=size["volume_size"])
        toy[f"stage{n}"] = dict(cfg[f"stage{n}"], network=network, xray_size=size["volume_size"], roi_size=16)
    _edit_json(config, toy)
    _save_fresh_weights(bundle)
    _save_fresh_stage_weights(bundle)
    store = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"])
    store.add_image("lat", str(data["lateral"]), {})
    return XRayToCTInfer(bundle, store, "cpu", [bundle / "models" / "model.pt"]), bundle


def _same(a, b, where="") -> None:
    """``a`` and ``b`` hold equal settings: tensors equal, objects compared attribute by attribute."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{k}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif hasattr(a, "__dict__") and not isinstance(a, (type, types.FunctionType, types.MethodType)):
        assert type(a) is type(b), where
        _same(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_chain_requests_read_the_later_stages_weights_once_and_pick_up_a_replaced_file(data, tmp_path):
    """Two "1-3" requests: the second reads no weights file (both files are garbage by then, with their size and
    time kept, and it still gets the first request's CT); replacing stage 2's file reloads stage 2 only, and the
    task keeps one network per stage. The chain it builds is the bundle's own ``cascade``, networks included."""
    from custom.core.bundle import make_parser

    task, bundle = _toy_chain_task(tmp_path, data)
    files = {n: bundle / "models" / f"model_stage{n}.pt" for n in (2, 3)}
    genuine = {n: f.read_bytes() for n, f in files.items()}

    def chain(ct_id):
        request = {"image": str(data["frontal"]), "image_id": "pa", "lateral": "lat", "ct_id": ct_id}
        out, params = task(dict(request, stages="1-3", num_inference_steps=1, num_samples=1, seed=3))
        assert params["stage_shapes"] == [[16] * 3, [24] * 3, [32] * 3]
        return np.asarray(nib.load(out).dataobj)

    first = chain("first")
    assert task.stage_networks.loads == 2
    held = {n: task.stage_networks.get(n, *_stage_settings(task, n)) for n in (2, 3)}  # cached: reads nothing
    assert task.stage_networks.loads == 2
    assert {n: key[0] for n, key in task.stage_networks.cached().items()} == {
        n: str(f.resolve()) for n, f in files.items()
    }

    for f in files.values():  # same size and modification time, content no torch.load could read
        st = f.stat()
        f.write_bytes(b"\0" * st.st_size)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    np.testing.assert_array_equal(chain("second"), first)
    assert task.stage_networks.loads == 2
    assert all(task.stage_networks.get(n, *_stage_settings(task, n)) is held[n] for n in (2, 3))

    torch.manual_seed(7)  # new stage 2 weights, written with a later modification time
    new_stage2 = {k: v + 0.01 * torch.randn_like(v) for k, v in held[2].state_dict().items()}
    torch.save(new_stage2, files[2])
    mtime = files[2].stat().st_mtime_ns
    os.utime(files[2], ns=(mtime, mtime + 10**9))
    third = chain("third")
    assert task.stage_networks.loads == 3 and len(task.stage_networks.cached()) == 2
    reloaded = task.stage_networks.get(2, *_stage_settings(task, 2))
    assert reloaded is not held[2] and task.stage_networks.get(3, *_stage_settings(task, 3)) is held[3]
    _same(reloaded.state_dict(), new_stage2)
    assert not np.array_equal(third, first)

    # the app's chain against the bundle's build_cascade, on the genuine files
    files[2].write_bytes(genuine[2])
    files[3].write_bytes(genuine[3])
    parser = make_parser(task.bundle_config, bundle, {"stages": "1-3", "inferer#progress": False, "seed": 5})
    ours = task.cascade(parser, "1-3")
    theirs = make_parser(task.bundle_config, bundle, {"stages": "1-3", "inferer#progress": False, "seed": 5})
    theirs = theirs.get_parsed_content("cascade", instantiate=True)
    assert ours.run == theirs.run == [1, 2, 3] and len(ours.stages) == len(theirs.stages) == 3
    for n, (a, b) in enumerate(zip(ours.stages, theirs.stages), start=1):
        assert a["xray_size"] == b["xray_size"], n
        _same(a["inferer"], b["inferer"], f"stage {n} inferer")
        if n > 1:
            _same(a["network"].state_dict(), b["network"].state_dict(), f"stage {n} network")


def _stage_settings(task, number: int) -> tuple:
    """(network keyword arguments, weights path) of a later stage, as the task reads them from the bundle."""
    from custom.core.bundle import make_parser

    later = make_parser(task.bundle_config, task.bundle_dir).get_parsed_content("cascade#later", instantiate=True)
    return later[number - 2]["network"], later[number - 2]["ckpt_path"]


def _listing(*folders: Path) -> dict:
    return {str(f): sorted(os.listdir(f)) for f in folders}


def _hostile_names(root: Path) -> list:
    return [str(p) for p in root.rglob("*") if "pwned" in p.name]


def test_real_server_refuses_ids_that_are_paths_and_writes_nothing_outside_the_studies_folder(server, data):
    """Image ids, label tags and output ids become file names: anything that could leave the studies folder is a 400
    before a byte is written or an inference starts."""
    import requests

    studies, uploads = data["tmp"] / "studies_server", data["tmp"] / "server_tmp"
    outside = (data["tmp"], data["tmp"].parent)  # where ../ and ../../ from the studies folder land
    for image_id, key in (("guard_pa", "frontal"), ("guard_lat", "lateral"), ("guard_ct", "ct")):
        with open(data[key], "rb") as f:
            r = requests.put(f"{server}/datastore/image", params={"image": image_id}, files={"file": f}, timeout=30)
        assert r.status_code == 200, r.text
    before, uploads_before = _listing(*outside), set(os.listdir(uploads))
    payload = data["frontal"].read_bytes()

    def put(what, query, filename="x.nii.gz"):
        field = "file" if what == "image" else "label"
        return requests.put(f"{server}/datastore/{what}", params=query, files={field: (filename, payload)}, timeout=30)

    absolute = str(data["tmp"].parent / "pwned_c")
    bad_ids = ["../../pwned_a", "..\\..\\pwned_b", absolute, "..", ".pwned_d", "a/../pwned_e", "pwned\x00f", ""]
    answers = [put("image", {"image": i}) for i in bad_ids[:-1]]
    answers += [put("label", {"image": "guard_pa", "tag": i}) for i in bad_ids]
    answers += [put("label", {"image": i, "tag": "final"}) for i in bad_ids]
    # the datastore's own index lives in the studies folder: an upload must not replace it
    answers.append(put("image", {"image": "datastore_v2"}, filename="pwned.json"))
    for params, model, image in (
        ({"lateral": "guard_lat", "ct_id": "../../pwned_ct"}, "xray2ct", "guard_pa"),
        ({"lateral": "../guard_lat"}, "xray2ct", "guard_pa"),
        ({"refined_id": "../../pwned_refined"}, "ct_refiner", "guard_ct"),
        ({"refined_id": str(data["tmp"].parent / "pwned_refined")}, "ct_refiner", "guard_ct"),
        ({"coarse_tag": "../../pwned"}, "mask_refiner", "guard_pa"),
    ):
        start = time.time()
        answers.append(
            requests.post(
                f"{server}/infer/{model}", params={"image": image}, data={"params": json.dumps(params)}, timeout=30
            )
        )
        assert time.time() - start < 5, "refused only after running the model"
    answers.append(  # an uploaded image with an output id that is a path
        requests.post(
            f"{server}/infer/xray2ct",
            data={"params": json.dumps({"lateral": "guard_lat", "ct_id": "../pwned_upload"})},
            files={"file": ("pa.nii.gz", payload)},
            timeout=30,
        )
    )
    for r in answers:
        assert r.status_code == 400, (r.request.url, r.status_code, r.text)
        detail = r.json()["detail"]
        assert "id" in detail or "tag" in detail or "file type" in detail, detail
        assert str(data["tmp"]) not in detail
    assert _listing(*outside) == before
    assert set(os.listdir(uploads)) <= uploads_before  # no temporary copy of a refused upload is left behind
    assert _hostile_names(data["tmp"].parent) == []
    store = requests.get(f"{server}/datastore/?output=all", timeout=10).json()["objects"]
    assert not [k for k in store if "pwned" in k] and (studies / "datastore_v2.json").is_file()
    assert json.loads((studies / "datastore_v2.json").read_text())["objects"]  # the index is still the index


def test_real_server_infer_reads_only_datastore_images_or_uploads(server, data):
    """A server path as the image is refused with the same answer whether or not it exists: no file oracle."""
    import requests

    with open(data["ct"], "rb") as f:
        assert requests.put(f"{server}/datastore/image?image=oracle_ct", files={"file": f}, timeout=30).ok

    def infer(image, params=None, model="ct_refiner"):
        r = requests.post(
            f"{server}/infer/{model}?output=json",
            params={"image": image},
            data={"params": json.dumps(params or {})},
            timeout=60,
        )
        return r.status_code, r.json().get("detail", "").replace(image, "<image>")

    existing, missing = str(data["ct"]), str(data["tmp"] / "no_such_dir" / "ct.nii.gz")
    a_folder = str(data["tmp"])
    answers = {infer(path) for path in (existing, missing, a_folder, "../" + Path(existing).name)}
    assert len(answers) == 1, answers
    status, detail = answers.pop()
    assert status == 400 and "datastore" in detail and "upload" in detail, detail
    # a bare name is a datastore id, never a file in the server's working folder (server.log is there)
    assert (data["tmp"] / "server.log").is_file()
    answers = {infer(name) for name in ("server.log", "no_such_file.log")}
    assert len(answers) == 1 and answers.pop()[0] == 404
    # params cannot swap a server path in for the image or the uploaded label
    for params, model in (({"image": existing}, "ct_refiner"), ({"label": existing}, "mask_refiner")):
        status, detail = infer("oracle_ct", params, model)
        assert status == 400 and repr(next(iter(params))) in detail, detail
    status, _ = infer("oracle_ct")
    assert status == 200


def test_real_server_allows_only_the_configured_browser_origins(server, data):
    import requests

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    for origin, allowed in (("http://evil.example", False), ("null", False), (VIEWER_ORIGIN, True), (server, True)):
        answers = (
            requests.options(f"{server}/infer/mask_refiner", headers={"Origin": origin, **preflight}, timeout=10),
            requests.get(f"{server}/info/", headers={"Origin": origin}, timeout=10),
        )
        for r in answers:
            if origin != server:  # a page served by the server itself needs no CORS header
                assert r.headers.get("access-control-allow-origin") == (origin if allowed else None), (
                    origin,
                    r.headers,
                )
        assert (answers[1].status_code == 200) == allowed, (origin, answers[1].text)
    # a form POST is sent by browsers without a preflight: it must be refused, not only hidden from the page
    with open(data["frontal"], "rb") as f:
        r = requests.put(
            f"{server}/datastore/image?image=from_evil",
            files={"file": f},
            headers={"Origin": "http://evil.example"},
            timeout=30,
        )
    assert r.status_code == 403 and "cors_origins" in r.json()["detail"]
    assert "from_evil" not in requests.get(f"{server}/datastore/?output=all", timeout=10).json()["objects"]


def test_real_server_answers_malformed_requests_with_4xx(server, data):
    import requests

    with open(data["frontal"], "rb") as f:
        assert requests.put(f"{server}/datastore/image?image=malformed_pa", files={"file": f}, timeout=30).ok
    label = {"label": ("l.nii.gz", data["frontal"].read_bytes())}
    image = {"file": ("i.nii.gz", data["frontal"].read_bytes())}
    cases = [
        (requests.post, "/infer/xray2ct?image=malformed_pa", {"data": {"params": "{not json"}}, 400, "JSON"),
        (requests.post, "/infer/xray2ct?image=malformed_pa", {"data": {"params": "[1, 2]"}}, 400, "JSON object"),
        (requests.post, "/infer/xray2ct?image=a/b", {"data": {"params": "{}"}}, 400, "'a/b'"),
        (requests.put, "/datastore/label?image=never_added&tag=final", {"files": label}, 404, "never_added"),
        (requests.put, "/datastore/label?image=malformed_pa", {"files": label, "data": {"params": "[]"}}, 400, "JSON"),
        (requests.put, "/datastore/image?image=x", {"files": image, "data": {"params": "nope"}}, 400, "JSON"),
        (requests.put, "/datastore/image/info?image=malformed_pa", {"data": {"info": "[1]"}}, 400, "JSON"),
        (requests.delete, "/datastore/image?id=never_added", {}, 404, "never_added"),
        (requests.post, "/train/mask_refiner", {"json": {"final_tag": "never_saved"}}, 400, "never_saved"),
        (requests.post, "/train/mask_refiner", {"json": {"final_tag": "../x"}}, 400, "final_tag"),
        (requests.post, "/train/mask_refiner", {"json": {"max_epochs": "many"}}, 400, "max_epochs"),
        (requests.post, "/train/no_such_model", {"json": {}}, 404, "no_such_model"),
    ]
    jobs = requests.get(f"{server}/train/?all=true", timeout=10).text
    for method, path, kwargs, status, words in cases:
        r = method(f"{server}{path}", timeout=30, **kwargs)
        assert r.status_code == status, (path, kwargs.get("data") or kwargs.get("json"), r.status_code, r.text)
        assert words in r.json()["detail"], (path, r.text)
    assert requests.get(f"{server}/train/?all=true", timeout=10).text == jobs  # no training job was submitted
    assert requests.get(f"{server}/info/", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "value, words",
    [
        ("../x", "path separator"),
        ("a\\b", "path separator"),
        ("/etc/passwd", "path separator"),
        ("..", "'.'"),
        (".hidden", "'.'"),
        ("a..b", "'..'"),
        ("a\x00b", "control character"),
        ("", "empty"),
        ("x" * 300, "long"),
        (7, "string"),
    ],
)
def test_datastore_ids_that_could_name_a_file_elsewhere_are_refused(value, words):
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.guards import check_id
    finally:
        sys.path.remove(str(APP_DIR))
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as e:
        check_id(value, "image id")
    assert e.value.status_code == 400 and words in e.value.detail and "image id" in e.value.detail
    for good in ("chest", "pa_ct", "slice0.v2", "1.2.840.10008", "Patient 7"):
        assert check_id(good, "image id") == good


def test_dicomweb_ids_must_be_uids_and_views_come_from_position_then_orientation_then_view_code():
    """On a DICOMweb datastore ids become URL path segments on the server: only DICOM UIDs pass. Radiograph views
    come from View Position, else Patient Orientation, else the View Code Sequence; decubitus codes decide nothing."""
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.dicomweb import view_of
        from lib.guards import check_uid
    finally:
        sys.path.remove(str(APP_DIR))
    from fastapi import HTTPException
    from pydicom.dataset import Dataset

    assert check_uid("1.2.840.10008.5.1.4.1.1.2", "image id") == "1.2.840.10008.5.1.4.1.1.2"
    for bad in ("chest_01", "1.2/../3", "1..2", ".1.2", "1.2.", "1" * 65, "1.2 3"):
        with pytest.raises(HTTPException) as e:
            check_uid(bad, "image id")
        assert e.value.status_code == 400 and "image id" in e.value.detail

    def header(**tags):
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    def code(meaning):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X", "SCT", meaning
        return item

    cases = [
        (header(ViewPosition="PA", PatientOrientation=["P", "F"]), "frontal", "View Position PA"),
        (header(ViewPosition="ll"), "lateral", "View Position LL"),
        (header(PatientOrientation=["R", "F"]), "frontal", "Patient Orientation R\\F"),
        (header(PatientOrientation=["A", "FR"]), "lateral", "Patient Orientation A\\FR"),
        (header(ViewCodeSequence=[code("postero-anterior")]), "frontal", "View Code"),
        (header(ViewCodeSequence=[code("left lateral")]), "lateral", "View Code"),
        (header(ViewCodeSequence=[code("left lateral decubitus")]), "", "no View Position"),
        (header(ViewPosition="RLO"), "", "View Position 'RLO'"),
    ]
    for ds, view, reason in cases:
        got = view_of(ds)
        assert got[0] == view and got[1].startswith(reason), (ds, got)


def test_browser_origins_come_from_the_conf_and_monailabels_setting_and_must_be_bare_origins():
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.guards import allowed_origins
    finally:
        sys.path.remove(str(APP_DIR))
    assert allowed_origins(None) == [] and allowed_origins("") == []
    got = allowed_origins(" http://localhost:3000, https://viewer.example.org/", ["http://localhost:3000/"])
    assert got == ["http://localhost:3000", "https://viewer.example.org"]  # trailing slashes never match an Origin
    assert allowed_origins("http://a.example,*") == ["*"]
    for bad in ("localhost:3000", "http://viewer.example.org/ohif", "ftp://x.example"):
        with pytest.raises(ValueError, match="scheme://host"):
            allowed_origins(bad)
