"""Cascade training: the trainer's losses and NaN guard, and the bundle's train.json run for real at tiny sizes."""

import json
from pathlib import Path

import torch
from conftest import ROOT, run_cli

from custom.engines.diffusion import CascadeDiffusionTrainer, DDIMInferer, DRRConsistencyLoss
from custom.networks import CascadeDenoiser

BUNDLE = ROOT / "bundles" / "xray2ct_cascade_diffusion"
TINY = {
    "volume_size": 16,
    "xray_size": 16,
    "token_grid": 4,
    "channels": [8, 8, 8],
    "hidden_size": 24,
    "vit_depth": 1,
    "num_heads": 2,
}


def _trainer(physics=0.0):
    net = CascadeDenoiser(16, 4, False, (8, 8, 8), 8, 16, 24, 1, 2)
    return CascadeDiffusionTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[None],
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
        loss_weights={"physics": physics},
        physics_loss=DRRConsistencyLoss("parallel"),
        ssim_win_size=3,
    )


def test_losses_are_finite_and_physics_loss_compares_like_with_like():
    torch.manual_seed(0)
    tr = _trainer(physics=0.1)
    ct = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    losses = tr.compute_losses(tr.network, torch.rand(2, 2, 16, 16), ct, {})
    assert set(losses) >= {"mse_v", "l1", "ssim", "gradient", "physics", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    phys = DRRConsistencyLoss("parallel")
    assert phys(ct, ct) < 1e-6 and phys(ct, -ct) > 0.01


def test_nan_loss_skips_the_step_without_touching_weights():
    tr = _trainer()
    before = [p.detach().clone() for p in tr.network.parameters()]
    batch = {"xray": torch.rand(1, 2, 16, 16), "ct": torch.full((1, 1, 16, 16, 16), float("nan"))}
    tr.state.device = torch.device("cpu")
    out = tr._iteration(tr, batch)
    out = out[0] if isinstance(out, list) else out  # MONAI decollates the output at MODEL_COMPLETED
    assert not torch.isfinite(torch.as_tensor(out["loss"]))
    assert all(torch.equal(a, b) for a, b in zip(before, tr.network.parameters()))


def test_inferer_returns_mean_and_uncertainty():
    net = CascadeDenoiser(16, 4, False, (8, 8, 8), 8, 16, 24, 1, 2).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    xray = torch.rand(2, 2, 16, 16)
    inf = DDIMInferer(16, num_inference_steps=2, num_samples=3, seed=1)
    out = inf(xray, net)
    assert out.shape == (2, 1, 16, 16, 16) and inf.last_std.shape == out.shape
    assert inf.last_std.mean() > 0  # several samples disagree: a voxelwise uncertainty
    assert torch.equal(out, DDIMInferer(16, num_inference_steps=2, num_samples=3, seed=1)(xray, net))  # seeded


def test_train_json_runs_and_evaluation_reports_baselines(tmp_path):
    """Real subprocesses: phantoms -> prepare -> monai.bundle run train.json -> evaluate-xray2ct."""
    assert run_cli("phantoms", tmp_path / "ph", "--count", 5, "--size", 16).returncode == 0
    r = run_cli(
        "prepare", tmp_path / "ph", tmp_path / "prep", "--size", 16, "--val_fraction", 0.2, "--test_fraction", 0.2
    )
    assert r.returncode == 0, r.stderr
    import os
    import subprocess
    import sys

    args = []
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v)]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "train.json"),
        "--dataset_dir",
        str(tmp_path / "prep"),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_epochs",
        "2",
        "--val_interval",
        "1",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--val_num_inference_steps",
        "2",
        "--ssim_win_size",
        "3",
        "--warmup_epochs",
        "1",
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "val_psnr_hu" in log and "Epoch: 2/2" in log
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # a plain state dict of tensors
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()

    r = run_cli(
        "evaluate-xray2ct",
        tmp_path / "prep" / "datalist.json",
        tmp_path / "eval",
        tmp_path / "run" / "model.pt",
        "--bundle",
        BUNDLE,
        "--steps",
        2,
        "--overrides",
        json.dumps(TINY),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(Path(tmp_path / "eval" / "summary.json").read_text())
    assert "data range 400" in summary["convention"]
    for method in ("model", "mean_ct", "backprojection"):
        assert set(summary[method]) == {"psnr_hu", "ssim", "mae_hu", "drr_error"}
    assert (tmp_path / "eval" / "metrics.csv").read_text().count("\n") == 1 + 3 * summary["cases"]
