"""The mask refiner bundle's request checks, run as the first step of its configs before any network or data is
loaded, so that a bad setting ends the run at once with one line that names the key to set."""

from __future__ import annotations

from pathlib import Path

from custom.core.bundle.errors import bundle_check
from custom.core.errors import InputError
from custom.core.options import as_float, as_int, need_file, writable_dir
from custom.mask_refiner.safeguard import check_min_change


def check_threshold(threshold, name: str = "threshold") -> float:
    """The mask threshold: a probability, so in [0, 1] (outside it every pixel, or none, would be foreground)."""
    return as_float(threshold, name, 0.0, 1.0, hint=" (a probability)")


@bundle_check
def check_inference_request(
    ckpt_path, output_dir, image_path="", probabilities_path="", threshold=0.5, min_change=0.0
) -> None:
    """``inference.json``: weights, the image with its probability map (or neither: the sample), the threshold, the
    safeguard's ``min_change`` and a writable output folder."""
    need_file(ckpt_path, "ckpt_path", "; set ckpt_path to a trained model.pt (the bundle ships one)")
    if image_path or probabilities_path:
        if not probabilities_path:
            raise InputError(
                "no probability map given; set probabilities_path to the coarse map of image_path (.npy, (2, H, W) "
                "or (H, W))"
            )
        if not image_path:
            raise InputError("no image given; set image_path to the image of probabilities_path (PNG, NIfTI, DICOM)")
        need_file(image_path, "image_path")
        need_file(probabilities_path, "probabilities_path")
    check_threshold(threshold)
    check_min_change(min_change)
    writable_dir(output_dir, "output_dir")


@bundle_check
def check_training_request(
    output_dir, dataset_dir, threshold=0.5, min_change=0.0, max_epochs=1, val_interval=1
) -> None:
    """``train.json`` and the configs layered on it: the dataset, threshold, the safeguard's ``min_change`` (it acts
    in validation), epochs and a writable output folder."""
    if not (Path(str(dataset_dir)) / "refiner_splits.json").is_file():
        raise InputError(
            f"dataset_dir {dataset_dir}: not a refiner dataset (no refiner_splits.json); make one with "
            "`python -m custom refiner-setup`"
        )
    check_threshold(threshold)
    check_min_change(min_change)
    as_int(max_epochs, "max_epochs", 1)
    as_int(val_interval, "val_interval", 1)
    writable_dir(output_dir, "output_dir")
