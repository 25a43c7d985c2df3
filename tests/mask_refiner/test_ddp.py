"""The mask refiner's multi_gpu_train.json under torchrun with 2 gloo processes on CPU, against one process."""

import json
import os
import re
import subprocess
import sys

import torch
from conftest import ROOT, run_cli, tensorboard_files_without_data

BUNDLE = ROOT / "bundles" / "mask_refiner_2d"
TINY = {"channels": [4, 4, 4, 4], "max_epochs": 2, "val_interval": 1, "batches_per_epoch": 4}


def _run(configs, data_dir, out_dir, cwd, torchrun=False, extra=()):
    files = "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in configs) + "]"
    args = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(data_dir), "--output_dir", str(out_dir)]
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v)]
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    )
    cmd = launcher + ["-m", "monai.bundle", "run", "--config_file", files, *args, *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    # a failing rank's own error comes first and is buried under the other rank's and torchrun's tracebacks
    errors = [line for line in proc.stderr.splitlines() if re.search(r"(Error|Exception|Timeout)\b", line)]
    assert proc.returncode == 0, "\n".join(errors[:20]) + "\n...\n" + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def _last_epoch_losses(log: str, max_epochs: int) -> list[float]:
    return [
        float(x) for x in re.findall(rf"Epoch: {max_epochs}/{max_epochs}, Iter: \d+/\d+ -- train_loss: ([\d.]+)", log)
    ]


def test_two_process_training_syncs_weights_and_matches_one_process(tmp_path):
    assert (
        run_cli("refiner-generate", tmp_path / "src", "--patients", 8, "--controls", 2, "--width", 32).returncode == 0
    )
    assert run_cli("refiner-setup", tmp_path / "src", tmp_path / "data").returncode == 0

    single = _run(["train.json"], tmp_path / "data", tmp_path / "one", tmp_path)
    # each rank also saves its own final weights, to check that DDP kept the two replicas identical
    save_rank = "$torch.save(@network.module.state_dict(), @output_dir + '/rank' + str(dist.get_rank()) + '.pt')"
    finalize = json.dumps([save_rank, "$dist.destroy_process_group()"])
    ddp = _run(
        ["train.json", "multi_gpu_train.json"],
        tmp_path / "data",
        tmp_path / "two",
        tmp_path,
        torchrun=True,
        extra=["--finalize", finalize],
    )

    # one checkpoint, written by rank 0 only; logging from rank 0 only
    assert (tmp_path / "two" / "model.pt").is_file()
    assert len(list((tmp_path / "two").glob("model*.pt"))) == 1
    assert len(re.findall(r"Epoch: 1/2, Iter: 1/\d+ -- train_loss", ddp)) == 1, "both ranks logged"
    events = list((tmp_path / "two").glob("events.out.tfevents*"))
    assert len(events) == 1 and not tensorboard_files_without_data(
        tmp_path / "two"
    ), "rank 1 built a TensorBoard writer"
    # each rank ran half of the epoch's batches
    assert re.search(r"Iter: 2/2 -- train_loss", ddp) and not re.search(r"Iter: \d/4 -- train_loss", ddp)

    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ranks[0]:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], msg=f"replicas diverged at {key}")

    one, two = _last_epoch_losses(single, 2), _last_epoch_losses(ddp, 2)
    assert one and two
    mean_one, mean_two = sum(one) / len(one), sum(two) / len(two)
    assert abs(mean_one - mean_two) <= 0.25 * mean_one, (mean_one, mean_two)
