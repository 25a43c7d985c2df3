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
    xray_size=None,
    bundle_root="",
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
    if bundle_root:
        check_shipped_sizes(bundle_root, ckpt_path, {"volume_size": volume_size, "xray_size": xray_size})
    writable_dir(output_dir, "output_dir")


def check_shipped_sizes(bundle_root, ckpt_path, sizes: dict) -> None:
    """With the bundle's own weights, the sizes they were trained at (``metadata.json``'s network data format):
    nothing in a convolutional network's weights fixes the volume size, so a mismatch would run and reconstruct
    silently worse. Weights of one's own (another ``ckpt_path``) may have any size."""
    import json
    from pathlib import Path

    root = Path(str(bundle_root))
    if Path(str(ckpt_path)).resolve() != (root / "models" / "model.pt").resolve():
        return
    try:
        formats = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]
        trained = {
            "volume_size": formats["outputs"]["pred"]["spatial_shape"][0],
            "xray_size": formats["inputs"]["xray"]["spatial_shape"][0],
        }
    except (OSError, ValueError, KeyError, IndexError):
        return
    for key, value in sizes.items():
        if value is not None and int(value) != int(trained[key]):
            raise InputError(
                f"{key} {value}: the shipped weights were trained at {key} {trained[key]}; leave {key} at "
                f"{trained[key]}, or set ckpt_path to weights trained at {value}"
            )


@bundle_check
def check_training_request(output_dir, resume=False, memory_check=True, max_epochs=1, val_interval=1) -> None:
    """``train.json`` and the configs layered on it: flags, epoch counts and a writable output folder."""
    as_bool(resume, "resume")
    as_bool(memory_check, "memory_check")
    as_int(max_epochs, "max_epochs", 1)
    as_int(val_interval, "val_interval", 1)
    writable_dir(output_dir, "output_dir")
