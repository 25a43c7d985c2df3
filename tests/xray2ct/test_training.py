"""Cascade training: the trainer's losses and NaN guard, and the bundle's train.json run for real at tiny sizes."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli, tensorboard_files_without_data, tiny_cascade_trainer

from custom.xray2ct.inferer import DDIMInferer
from custom.xray2ct.losses import DRRConsistencyLoss
from custom.xray2ct.network import CascadeDenoiser

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


def test_losses_are_finite_and_physics_loss_compares_like_with_like():
    torch.manual_seed(0)
    tr = tiny_cascade_trainer(physics=0.1)
    ct = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    losses = tr.compute_losses(tr.network, torch.rand(2, 2, 16, 16), ct, {})
    assert set(losses) >= {"mse_v", "l1", "ssim", "gradient", "physics", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    phys = DRRConsistencyLoss("parallel")
    same, flipped = phys(ct, ct), phys(ct, -ct)
    assert same.shape == (2,) and same.max() < 1e-6 and flipped.min() > 0.01


def test_x0_terms_are_weighted_by_alpha_bar_even_for_one_sample(monkeypatch):
    """At the noisiest timestep (alpha-bar 1e-5) the image terms must nearly vanish, also with batch size 1."""
    torch.manual_seed(0)
    tr = tiny_cascade_trainer()
    ct = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    monkeypatch.setattr(torch, "randint", lambda lo, hi, size, device=None: torch.full(size, hi - 1, device=device))
    weighted = tr.compute_losses(tr.network, torch.rand(1, 2, 16, 16), ct, {})
    tr.x0_loss_weighting = "none"
    plain = tr.compute_losses(tr.network, torch.rand(1, 2, 16, 16), ct, {})
    a = float(tr.alpha_bar[-1])
    for name in ("l1", "ssim", "gradient"):
        assert plain[name] > 0.01
        assert torch.isclose(weighted[name], a * plain[name], rtol=1e-3, atol=1e-9)


def test_nan_loss_skips_the_step_without_touching_weights():
    tr = tiny_cascade_trainer()
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


def _bundle_run(configs, cwd, *overrides, torchrun=False, timeout=600):
    import os
    import subprocess
    import sys

    files = "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in configs) + "]"
    args = ["--bundle_root", str(BUNDLE)]
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v)]
    args += ["--num_workers", "0", "--ssim_win_size", "3", "--val_num_inference_steps", "2", *map(str, overrides)]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    cmd = launcher + ["-m", "monai.bundle", "run", "--config_file", files, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _train(tmp, max_epochs, resume=False, out="run", val_interval=1):
    """train.json on tmp/prep into tmp/<out> (tiny sizes)."""
    return _bundle_run(
        ["train.json"],
        tmp,
        "--dataset_dir",
        tmp / "prep",
        "--output_dir",
        tmp / out,
        "--max_epochs",
        max_epochs,
        "--val_interval",
        val_interval,
        "--batch_size",
        2,
        "--warmup_epochs",
        1,
        "--resume",
        str(bool(resume)),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Phantoms -> prepare -> ``monai.bundle run train.json``, tiny sizes, real subprocesses, from a foreign cwd."""
    tmp = tmp_path_factory.mktemp("cascade")
    assert run_cli("phantoms", tmp / "ph", "--count", 6, "--size", 16).returncode == 0
    r = run_cli("prepare", tmp / "ph", tmp / "prep", "--size", 16, "--val_fraction", 0.34, "--test_fraction", 0.17)
    assert r.returncode == 0, r.stderr
    proc = _train(tmp, max_epochs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc.stdout + proc.stderr


def test_train_json_trains_validates_and_saves_plain_weights(trained):
    tmp, log = trained
    assert "val_psnr_hu" in log and "Epoch: 2/2" in log
    state = torch.load(tmp / "run" / "model.pt", weights_only=True)  # a plain state dict of tensors
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (tmp / "run" / "checkpoint_final.pt").is_file()


def test_evaluation_reports_model_and_baselines(trained):
    tmp, _ = trained
    r = run_cli(
        "evaluate-xray2ct",
        tmp / "prep" / "datalist.json",
        tmp / "eval",
        tmp / "run" / "model.pt",
        "--bundle",
        BUNDLE,
        "--steps",
        2,
        "--overrides",
        json.dumps(TINY),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(Path(tmp / "eval" / "summary.json").read_text())
    assert "data range 400" in summary["convention"]
    for method in ("model", "mean_ct", "backprojection"):
        assert set(summary[method]) == {"psnr_hu", "psnr_x2ctgan", "ssim", "mae_hu", "drr_error"}
    assert (tmp / "eval" / "metrics.csv").read_text().count("\n") == 1 + 3 * summary["cases"]


def test_evaluate_json_writes_per_case_metrics(trained):
    tmp, _ = trained
    proc = _bundle_run(
        ["train.json", "evaluate.json"],
        tmp,
        "--dataset_dir",
        tmp / "prep",
        "--ckpt_path",
        tmp / "run" / "model.pt",
        "--output_dir",
        tmp / "evaljson",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp / "evaljson" / "val_psnr_hu_raw.csv").read_text().splitlines()
    assert rows[0].startswith("filename") and len(rows) == 2 and rows[1].startswith("phantom_")


def test_inference_json_writes_ct_in_hu_with_affine_and_uncertainty(trained, tmp_path):
    import nibabel as nib
    import numpy as np

    tmp, _ = trained
    from conftest import write_dx

    # one case from the datalist and one from two clinical-style files (a DX DICOM and a PNG) given by path
    proc = _bundle_run(
        ["inference.json"],
        tmp_path,
        "--dataset_dir",
        tmp / "prep",
        "--ckpt_path",
        tmp / "run" / "model.pt",
        "--output_dir",
        tmp_path / "out",
        "--num_inference_steps",
        2,
        "--num_samples",
        2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    case = next((tmp_path / "out").iterdir())
    img = nib.load(str(case / "ct.nii.gz"))
    assert img.shape == (16, 16, 16)
    assert np.allclose(np.diag(img.affine)[:3], 20.0) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    data = img.get_fdata()
    assert data.min() >= -200 and data.max() <= 200
    assert nib.load(str(case / "uncertainty.nii.gz")).get_fdata().max() > 0
    assert json.loads((case / "ct.json").read_text())["window"] == [-200.0, 200.0]
    assert (case / "comparison.png").stat().st_size > 0

    from PIL import Image

    frontal = write_dx(tmp_path / "frontal.dcm", np.random.default_rng(0).integers(100, 4000, (40, 40)))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "lat.png")
    proc = _bundle_run(
        ["inference.json"],
        tmp_path,
        "--frontal_path",
        frontal,
        "--lateral_path",
        tmp_path / "lat.png",
        "--ckpt_path",
        tmp / "run" / "model.pt",
        "--output_dir",
        tmp_path / "out2",
        "--num_inference_steps",
        2,
        "--num_samples",
        1,
        "--check_views",
        "False",  # random pixels, not a chest: the view-pair checks would refuse them
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (next((tmp_path / "out2").iterdir()) / "ct.nii.gz").is_file()


def test_multi_gpu_config_runs_two_processes_on_cpu(trained):
    tmp, _ = trained
    proc = _bundle_run(
        ["train.json", "multi_gpu_train.json"],
        tmp,
        "--dataset_dir",
        tmp / "prep",
        "--output_dir",
        tmp / "ddp",
        "--max_epochs",
        1,
        "--val_interval",
        1,
        "--batch_size",
        1,
        "--warmup_epochs",
        1,
        torchrun=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp / "ddp" / "model.pt").is_file()
    # logging and checkpoints on rank 0 only: one line per iteration, not two
    log = proc.stdout + proc.stderr
    assert len(re.findall(r"Epoch: 1/1, Iter: 1/\d+ -- train_loss", log)) == 1, "both ranks logged"
    assert not tensorboard_files_without_data(tmp / "ddp"), "rank 1 built a TensorBoard writer"


def test_stages_2_and_3_train_from_their_json_on_the_previous_stage(trained):
    """train_stage2.json and train_stage3.json layered on train.json, at tiny sizes, each initialised from the stage
    before it: sub-volume denoisers trained on random 8^3 crops of the 16^3 volume, conditioned on the augmented,
    upsampled previous volume, validated on the whole volume in tiles; gradient checkpointing in stage 3."""
    tmp, _ = trained
    previous = tmp / "run" / "model.pt"
    for stage in (2, 3):
        out = tmp / f"stage{stage}"
        proc = _bundle_run(
            ["train.json", f"train_stage{stage}.json"],
            tmp,
            "--dataset_dir",
            tmp / "prep",
            "--output_dir",
            out,
            "--init_from",
            previous,
            "--max_epochs",
            1,
            "--val_interval",
            1,
            "--batch_size",
            1,
            "--warmup_epochs",
            1,
            "--crop_size",
            8,
            "--lift_grid",
            8,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = proc.stdout + proc.stderr
        loaded = re.search(r"init_from \S+: (\d+) tensors loaded", log)  # the layers both networks share
        assert loaded and int(loaded.group(1)) > 0, log[-3000:]
        init = torch.load(previous, weights_only=True)
        state = torch.load(out / "checkpoint_final.pt", weights_only=True)["model"]  # the online network
        assert set(torch.load(out / "model.pt", weights_only=True)) == set(state)  # the EMA weights, same layers
        shared = set(state) & set(init)
        changed = [k for k in shared if not torch.equal(state[k], init[k])]
        assert len(shared) > 0.9 * len(state) and changed, f"nothing trained; {proc.stdout[-2000:]}"
        previous = out / "model.pt"
        from monai.bundle import ConfigParser

        cfg = ConfigParser()
        cfg.read_config([str(BUNDLE / "configs" / f) for f in ("train.json", f"train_stage{stage}.json")])
        assert cfg["use_prev"] is True and cfg["network_def"]["_target_"].endswith("PatchDenoiser")
        assert cfg["crop_size"] < cfg["volume_size"]  # sub-volumes at the shipped sizes
        assert cfg["loss_weights"]["physics"] == 0  # a crop's DRR is not a projection of the chest


def test_resume_continues_from_the_last_checkpoint(trained):
    tmp, _ = trained
    proc = _train(tmp, max_epochs=3, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Restored all variables" in log
    assert "Epoch: 3/3" in log and "Epoch: 1/3" not in log  # epochs 1-2 are not trained again


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(trained):
    """Model, optimizer, scheduler, EMA and RNG state are restored: 1 epoch + resume equals 2 epochs, bit for bit."""
    tmp, _ = trained

    def run(out, max_epochs, resume):
        proc = _train(tmp, max_epochs, resume, out=out, val_interval=5)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("straight", 2, False)
    run("interrupted", 1, False)
    run("interrupted", 2, True)
    final = [torch.load(tmp / o / "checkpoint_final.pt", weights_only=True) for o in ("straight", "interrupted")]
    assert set(final[0]["rng"]) >= {"python", "numpy", "torch"}
    for part in ("model", "ema"):
        for key, value in final[0][part].items():
            torch.testing.assert_close(final[1][part][key], value, rtol=0, atol=0, msg=f"{part}.{key} differs")


def test_training_survives_sigkill_and_resumes_to_the_same_epoch_count(trained):
    """A real run killed with SIGKILL mid-training continues from its last checkpoint with --resume True."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp, _ = trained
    out = tmp / "killed"
    files = f"['{BUNDLE / 'configs' / 'train.json'}']"
    args = ["--bundle_root", str(BUNDLE)]
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v)]
    args += [
        "--num_workers",
        "0",
        "--ssim_win_size",
        "3",
        "--dataset_dir",
        str(tmp / "prep"),
        "--output_dir",
        str(out),
        "--max_epochs",
        "60",
        "--val_interval",
        "1000",
        "--save_interval",
        "1",
        "--batch_size",
        "2",
        "--warmup_epochs",
        "1",
    ]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("checkpoint_checkpoint_epoch=3*.pt")):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(out.glob("checkpoint_*.pt"))
    assert saved and not (out / "checkpoint_final.pt").exists()
    for ckpt in saved:  # every checkpoint on disk is complete: written under a temporary name, then renamed
        torch.load(ckpt, weights_only=True)
    resumed = subprocess.run(cmd + ["--resume", "True"], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Restored all variables" in log
    assert "Epoch: 60/60" in log and "Epoch: 1/60" not in log
    assert (out / "checkpoint_final.pt").is_file()


def test_checkpoint_saver_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    """A crash inside torch.save leaves no file under the final name (MONAI's own saver would leave half a file)."""
    from custom.core.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1)
    handler = saver._interval_checkpoint.save_handler
    handler({"model": net.state_dict()}, "good.pt")
    good = (tmp_path / "good.pt").read_bytes()

    def crash(obj, f, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    for name in ("good.pt", "new.pt"):
        with pytest.raises(KeyboardInterrupt):
            handler({"model": net.state_dict()}, name)
    assert (tmp_path / "good.pt").read_bytes() == good  # the previous complete file is untouched
    assert not (tmp_path / "new.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt"]  # no temporary left behind
