"""The X-ray -> CT bundle's request checks, run as the first step of its configs before any network or data is
loaded, so that a bad setting ends the run at once with one line that names the key to set."""

from __future__ import annotations

from custom.core.bundle.errors import bundle_check
from custom.core.errors import InputError
from custom.core.options import as_bool, as_float, as_int, need_file, writable_dir
from custom.core.xray import check_view_paths


@bundle_check
def check_inference_request(
    ckpt_path,
    output_dir,
    frontal_path="",
    lateral_path="",
    datalist="",
    num_inference_steps=10,
    num_train_timesteps=1000,
    num_samples=1,
    check_views=True,
    eta=0.0,
    volume_size=64,
) -> None:
    """``inference.json``: weights, the two X-rays or a datalist, sampling settings, a writable output folder."""
    if frontal_path or lateral_path:
        check_view_paths(frontal_path, lateral_path)
    else:
        need_file(
            datalist,
            "datalist",
            "; set dataset_dir to a folder with a datalist.json (python -m custom prepare), or give frontal_path "
            "and lateral_path",
        )
    need_file(ckpt_path, "ckpt_path", "; set ckpt_path to a trained model.pt (the bundle ships one)")
    steps = as_int(num_train_timesteps, "num_train_timesteps", 1)
    as_int(num_inference_steps, "num_inference_steps", 1, steps)
    as_int(num_samples, "num_samples", 1)
    as_int(volume_size, "volume_size", 4)
    if int(volume_size) % 4:
        raise InputError(f"volume_size must be divisible by 4 (the network halves it twice), got {volume_size}")
    as_bool(check_views, "check_views")
    as_float(eta, "eta", 0.0)
    writable_dir(output_dir, "output_dir")


@bundle_check
def check_training_request(output_dir, resume=False, memory_check=True, max_epochs=1, val_interval=1) -> None:
    """``train.json`` and the configs layered on it: flags, epoch counts and a writable output folder."""
    as_bool(resume, "resume")
    as_bool(memory_check, "memory_check")
    as_int(max_epochs, "max_epochs", 1)
    as_int(val_interval, "val_interval", 1)
    writable_dir(output_dir, "output_dir")
