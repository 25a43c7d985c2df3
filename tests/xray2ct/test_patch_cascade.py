"""The cascade's super-resolution stages on sub-volumes: conditioning that means the same in a crop and in the
whole volume, tiled sampling, and the chain stage 1 -> 2 -> 3 through a real Ignite evaluator and writer."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator

from custom.core.errors import InputError
from custom.core.transforms import cube_affine
from custom.xray2ct.inferer import CascadeInferer, DDIMInferer, parse_stages
from custom.xray2ct.network import CascadeDenoiser
from custom.xray2ct.patch_network import PatchDenoiser, coordinate_embedding, cube_coordinates
from custom.xray2ct.trainer import prepare_cascade_batch
from custom.xray2ct.writer import ReconstructionWriter

TINY = dict(channels=(8, 8, 8), xray_channels=8, lift_channels=8, hidden_size=24, num_heads=2, geometry="parallel")


def patch_net(size, vit_depth=1, seed=0):
    torch.manual_seed(seed)
    net = PatchDenoiser(volume_size=size, lift_grid=8, vit_depth=vit_depth, **TINY)
    torch.nn.init.normal_(net.out[-1].weight, std=0.05)  # the zero output layer would hide every difference
    return net.eval()


def test_the_condition_of_a_crop_is_the_crop_of_the_whole_volumes():
    net = patch_net(32)
    xrays = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        lifted = net.lift_xrays(xrays)
        whole = net.condition(cube_coordinates(32)[None], lifted)
        origin = (8, 0, 20)
        crop = net.condition(cube_coordinates(32, origin, 12)[None], lifted)
    torch.testing.assert_close(crop, whole[..., 8:20, 0:12, 20:32], rtol=0, atol=1e-6)
    # the coordinates and the token position embedding too
    torch.testing.assert_close(cube_coordinates(32, origin, 12), cube_coordinates(32)[:, 8:20, 0:12, 20:32])
    tokens_whole = torch.nn.functional.avg_pool3d(cube_coordinates(32)[None], 4)
    tokens_crop = torch.nn.functional.avg_pool3d(cube_coordinates(32, (8, 0, 16), 16)[None], 4)
    emb_whole = coordinate_embedding(tokens_whole, 24, 8).reshape(8, 8, 8, 24)
    emb_crop = coordinate_embedding(tokens_crop, 24, 8).reshape(4, 4, 4, 24)
    torch.testing.assert_close(emb_crop, emb_whole[2:6, 0:4, 4:8], rtol=0, atol=1e-5)


class LocalDenoiser(torch.nn.Module):
    """A sub-volume network whose output at a voxel depends on its 3^3 neighbourhood only (one convolution over the
    same inputs as :class:`PatchDenoiser`): tiled and whole-volume sampling of it may differ only at tile borders,
    which the Gaussian blending weights down. (The real denoiser normalises over each tile, so it must be sampled on
    tiles of its training crop size, not compared with a whole-volume pass.)"""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1 + 2 + 1 + 3, 1, 3, padding=1)

    def lift_xrays(self, xrays):
        return xrays.mean(dim=(2, 3), keepdim=True)[..., None].expand(-1, -1, 4, 4, 4)

    def forward(self, x_t, t01, xrays, prev, coords, lifted):
        cond = PatchDenoiser.condition(coords, lifted)
        return self.conv(torch.cat([x_t, cond, prev, coords], dim=1)) * t01[:, None, None, None, None]


def test_tiled_sampling_matches_whole_volume_sampling():
    """Exactly with one tile covering the volume; within a tolerance with overlapping tiles."""
    xrays, prev = torch.rand(1, 2, 16, 16), torch.rand(1, 1, 32, 32, 32) * 2 - 1
    kw = dict(volume_size=32, num_inference_steps=3, seed=3)
    for net in (patch_net(32), LocalDenoiser()):
        with torch.no_grad():
            whole = DDIMInferer(**kw)(xrays, net, prev=prev)
            one_tile = DDIMInferer(**kw, roi_size=32)(xrays, net, prev=prev)
        torch.testing.assert_close(one_tile, whole)
    with torch.no_grad():
        tiled = DDIMInferer(**kw, roi_size=16, overlap=0.5)(xrays, net, prev=prev)
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().mean()) < 0.02 * float(whole.abs().mean())


def test_stages_are_parsed_strictly():
    assert parse_stages("1") == [1] and parse_stages("1-2") == [1, 2] and parse_stages("1-3") == [1, 2, 3]
    for bad in ("2-3", "1-4", "0", "3", "1-", "all"):
        with pytest.raises(InputError, match="stages must be one of"):
            parse_stages(bad)


def test_the_chain_writes_every_stage_on_its_own_grid(tmp_path):
    """Stage 1 at 8^3, stage 2 at 16^3, stage 3 at 32^3 in 16^3 tiles, through a real Ignite evaluator."""
    torch.manual_seed(0)
    stage1 = CascadeDenoiser(volume_size=8, token_grid=2, vit_depth=1, **TINY).eval()
    stages = [
        {"network": None, "inferer": DDIMInferer(8, num_inference_steps=2, num_samples=2), "xray_size": 8},
        {"network": patch_net(16), "inferer": DDIMInferer(16, num_inference_steps=1), "xray_size": 16},
        {"network": patch_net(32), "inferer": DDIMInferer(32, num_inference_steps=1, roi_size=16), "xray_size": 16},
    ]
    inferer = CascadeInferer(stages, "1-3")
    loader = DataLoader([{"xray": torch.rand(2, 16, 16), "case_id": "case_a"}], batch_size=1)
    writer = ReconstructionWriter(tmp_path, (-200.0, 200.0), 320.0, inferer, write_dicom=False)
    evaluator = SupervisedEvaluator(
        "cpu", loader, stage1, inferer=inferer, prepare_batch=prepare_cascade_batch, val_handlers=[writer]
    )
    evaluator.run()
    case = tmp_path / "case_a"
    for name, size in (("ct_stage1", 8), ("ct_stage2", 16), ("ct_stage3", 32), ("ct", 32)):
        img = nib.load(str(case / f"{name}.nii.gz"))
        assert img.shape == (size,) * 3, name
        np.testing.assert_allclose(img.affine, cube_affine(size, 320.0), atol=1e-4)  # 320 mm cube, 320/size mm
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(case / "ct_stage3.nii.gz")).dataobj),
        np.asarray(nib.load(str(case / "ct.nii.gz")).dataobj),
    )
    assert [o.shape[-1] for o in inferer.outputs] == [8, 16, 32]
    assert nib.load(str(case / "uncertainty.nii.gz")).shape == (32,) * 3


def test_the_bundle_runs_stage_1_by_default_and_refuses_stages_without_weights(tmp_path):
    from conftest import ROOT, run_bundle

    sample = ROOT / "bundles" / "xray2ct_cascade_diffusion" / "sample"
    files = ("--frontal_path", sample / "frontal.nii.gz", "--lateral_path", sample / "lateral.nii.gz")
    common = ("--output_dir", tmp_path / "out", "--num_inference_steps", 1, "--num_samples", 1)
    proc = run_bundle(
        "xray2ct_cascade_diffusion", *files, *common, "--stages", "1-2", "--stage2#ckpt_path", tmp_path / "none.pt"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "stage 2 has no weights" in proc.stderr.strip().splitlines()[-1]
    proc = run_bundle("xray2ct_cascade_diffusion", *files, *common, "--stages", "2-3")
    assert proc.returncode == 2 and "stages must be one of" in proc.stderr.strip().splitlines()[-1]


def test_the_per_stage_evaluation_scores_each_stage_against_its_real_previous_stage(tmp_path):
    """Stage 2's trilinear baseline is the upsampled *sampled* stage-1 output (what stage 2 gets), not the truth."""
    import json

    import torch.nn.functional as F

    from custom.core.metrics import refinement_metrics
    from custom.core.transforms import window_to_hu
    from custom.xray2ct.evaluation import evaluate_cascade

    torch.manual_seed(0)
    stage1 = CascadeDenoiser(volume_size=8, token_grid=2, vit_depth=1, **TINY).eval()
    torch.nn.init.normal_(stage1.out[-1].weight, std=0.05)
    stages = [
        {"network": stage1, "inferer": DDIMInferer(8, num_inference_steps=2, seed=5), "xray_size": 8},
        {"network": patch_net(16), "inferer": DDIMInferer(16, num_inference_steps=2, roi_size=8), "xray_size": 16},
    ]
    gt = torch.rand(16, 16, 16) * 400 - 200
    xray16 = torch.rand(2, 16, 16)

    def load(d, n):
        x = F.interpolate(xray16[None], size=(n, n), mode="area")[0]
        return x, F.interpolate(gt[None, None], size=(d,) * 3, mode="area")[0, 0]

    seen = []

    def sharpen(x, xray):
        seen.append(tuple(xray.shape))
        return 1.5 * F.interpolate(x, size=(16,) * 3, mode="trilinear", align_corners=False)

    summary, rows = evaluate_cascade(
        stages, [("a", "phantoms", load)], steps_curve=[1], out_dir=tmp_path, paths={"sharpen": sharpen}, path_size=16
    )
    ways = {r["path"]: r for r in rows if "path" in r}
    rows = [r for r in rows if "path" not in r]
    methods = {(r["stage"], r["method"]) for r in rows}
    assert methods == {(1, "model"), (1, "model_1_steps"), (2, "trilinear"), (2, "model"), (2, "model_1_steps")}
    with torch.no_grad():
        first = DDIMInferer(8, num_inference_steps=2, seed=5)(load(8, 8)[0][None], stage1)
    up = window_to_hu(F.interpolate(first, size=(16,) * 3, mode="trilinear", align_corners=False)[0, 0], (-200, 200))
    expected = refinement_metrics(up, gt, (-200, 200))
    tri = next(r for r in rows if r["method"] == "trilinear")
    assert abs(tri["psnr_hu"] - expected["psnr_hu"]) < 1e-4 and abs(tri["sharpness"] - expected["sharpness"]) < 1e-4
    stage2 = summary["stages"]["2"]["phantoms"]
    model = next(r for r in rows if r["stage"] == 2 and r["method"] == "model")
    assert stage2["gain_db"]["min"] == pytest.approx(model["psnr_hu"] - tri["psnr_hu"])
    assert json.loads((tmp_path / "summary.json").read_text())["stages"]["2"]["phantoms"]["model"]["steps"] == 2
    assert "not teacher-forced" in summary["previous_stage"]
    # the ways to the last size all start from the same stage-1 sample: trilinear and the chain match their stage rows
    assert list(ways) == ["stage 1 + trilinear", "stages 1-2", "sharpen"] and seen == [(1, 2, 8, 8)]  # stage 1's X-rays
    assert ways["stage 1 + trilinear"]["psnr_hu"] == pytest.approx(tri["psnr_hu"])
    assert ways["stages 1-2"]["psnr_hu"] == pytest.approx(model["psnr_hu"])
    assert ways["stages 1-2"]["seconds"] > model["seconds"]  # stage 1 included
    paths = summary["paths"]["phantoms"]
    assert paths["sharpen"]["gain_db"]["mean"] == pytest.approx(ways["sharpen"]["psnr_hu"] - tri["psnr_hu"])
    assert "gain_db" not in paths["stage 1 + trilinear"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "path" in header and "stage" in header


def test_every_shipped_cascade_stage_loads_strictly():
    """Stages 2 and 3 as inference.json builds them take the shipped weights strictly, and the network that
    train_stage<n>.json (layered on train.json) trains is the same one: a retrained stage fits inference unchanged."""
    from pathlib import Path

    from conftest import ROOT

    from custom.core.bundle import load_weights, make_parser, read_bundle_config

    bundle = ROOT / "bundles" / "xray2ct_cascade_diffusion"
    inference = make_parser(read_bundle_config(bundle), bundle)
    keys = ("volume_size", "lift_grid", "channels", "hidden_size", "vit_depth", "num_heads")
    for n, size in ((2, 128), (3, 256)):
        kwargs = inference.get_parsed_content(f"stage{n}#network")
        ckpt = Path(inference.get_parsed_content(f"stage{n}#ckpt_path"))
        assert ckpt == bundle / "models" / f"model_stage{n}.pt" and ckpt.is_file(), ckpt
        assert kwargs["volume_size"] == size
        net = load_weights(PatchDenoiser(**kwargs), ckpt)  # strict: every key, every shape
        assert net.volume_size == size
        train = make_parser(read_bundle_config(bundle, ["train.json", f"train_stage{n}.json"]), bundle)
        assert train.get_parsed_content("stage") == n
        trained = {k: train.get_parsed_content(f"network_def#{k}") for k in keys}
        assert trained == {k: kwargs[k] for k in keys}, f"stage {n}: train_stage{n}.json builds another network"
        assert train["network_def"]["_target_"] == "custom.xray2ct.patch_network.PatchDenoiser"
