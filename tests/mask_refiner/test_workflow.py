"""The mask refiner's one-command workflow, for real, at tiny sizes: generate -> setup -> train.json -> evaluate."""

import json

from conftest import ROOT, run_cli


def _workflow(tmp_path, batch_size, overrides):
    """``refiner-workflow`` for one epoch on tmp_path/src into tmp_path/out."""
    src, out = tmp_path / "src", tmp_path / "out"
    args = ("--postprocess_dir", src, "--output_dir", out, "--batch_size", batch_size, "--max_epochs", 1)
    return run_cli("refiner-workflow", *args, "--overrides", overrides, cwd=tmp_path)


def test_refiner_workflow_end_to_end(tmp_path):
    r = run_cli("refiner-generate", tmp_path / "src", "--patients", 6, "--controls", 2, "--width", 32)
    assert r.returncode == 0, r.stderr
    tiny = json.dumps({"channels": [4, 4, 4, 4], "val_interval": 1, "batches_per_epoch": 2})
    r = _workflow(tmp_path, 4, tiny)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "runs" / "model.pt").is_file()
    summary = json.loads((tmp_path / "out" / "eval" / "summary.json").read_text())
    assert summary["images"] >= 1 and 0 <= summary["harm_rate"] <= 1
    for key in ("coarse_dice", "refined_dice", "coarse_iou", "refined_surface_dice", "mean_delta_dice"):
        assert key in summary
    rows = (tmp_path / "out" / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + summary["images"] and "refined_hd95" in rows[0]
    splits = json.loads((tmp_path / "out" / "data" / "refiner_splits.json").read_text())
    assert "hard" in splits["hardness"].values()

    # inference.json on an image and its probability map, from a foreign working directory
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    bundle = ROOT / "bundles" / "mask_refiner_2d"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle),
        "--ckpt_path",
        str(tmp_path / "out" / "runs" / "model.pt"),
        "--image_path",
        str(tmp_path / "src" / "images" / "patient_000.png"),
        "--probabilities_path",
        str(tmp_path / "src" / "patient_000_probabilities.npy"),
        "--output_dir",
        str(tmp_path / "pred"),
        "--channels",
        "[4,4,4,4]",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = np.asarray(Image.open(tmp_path / "pred" / "patient_000_mask.png"))
    probs = np.load(tmp_path / "src" / "patient_000_probabilities.npy")
    assert mask.shape == probs.shape[1:] and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(tmp_path / "pred" / "patient_000_overlay.png")).shape == probs.shape[1:] + (3,)


def test_a_run_shorter_than_the_validation_interval_still_validates_and_saves_its_model(tmp_path):
    """train.json validates every 5 epochs; a 1-epoch run must still validate its final weights and write model.pt
    (the workflow then evaluates it)."""
    r = run_cli("refiner-generate", tmp_path / "src", "--patients", 5, "--controls", 1, "--width", 32)
    assert r.returncode == 0, r.stderr
    tiny = json.dumps({"channels": [4, 4, 4, 4], "batches_per_epoch": 1})
    r = _workflow(tmp_path, 2, tiny)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "runs" / "model.pt").is_file()
    assert (tmp_path / "out" / "eval" / "summary.json").is_file()


def test_a_pickled_probability_map_is_called_what_it_is(tmp_path):
    """np.save of an object array pickles it; numpy's refusal suggests allow_pickle=True, which would run the file."""
    import numpy as np

    assert (
        run_cli("refiner-generate", tmp_path / "src", "--patients", 5, "--controls", 1, "--width", 32).returncode == 0
    )
    victim = sorted((tmp_path / "src").glob("*_probabilities.npy"))[0]
    np.save(victim, np.array([np.zeros((4, 4)), "not numbers"], dtype=object))
    r = run_cli("refiner-setup", tmp_path / "src", tmp_path / "data")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {victim}: not a numeric array"), r.stderr
    assert "allow_pickle" not in r.stderr


def test_shipped_weights_load_and_improve_fresh_generated_images(tmp_path):
    """The released model.pt fits the bundle's network and refines images from a seed it never saw."""
    import numpy as np
    import torch

    from custom.core.bundle import load_bundle_network
    from custom.mask_refiner.data import dice, generate_source, load_case, setup_dataset

    bundle = ROOT / "bundles" / "mask_refiner_2d"
    net, _ = load_bundle_network(bundle, bundle / "models" / "model.pt")
    src = generate_source(tmp_path / "src", n_patients=12, n_controls=2, width=96, seed=12345, heights=(300, 400))
    splits = setup_dataset(src, tmp_path / "data")
    coarse, refined = [], []
    with torch.no_grad():
        for pid in splits["hardness"]:
            x, gt = load_case(tmp_path / "data" / pid)
            logits = net(torch.from_numpy(x)[None])[0, 0].numpy()
            coarse.append(dice(x[1] > 0.5, gt > 0.5))
            refined.append(dice(logits > 0, gt > 0.5))
    assert np.mean(refined) > np.mean(coarse)
