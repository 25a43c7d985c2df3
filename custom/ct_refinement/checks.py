"""The CT detail refinement bundle's request checks, run as the first step of its configs before any network or data
is loaded, so that a bad setting ends the run at once with one line that names the key to set."""

from __future__ import annotations

from pathlib import Path

from custom.core.bundle.errors import bundle_check
from custom.core.errors import InputError
from custom.core.options import as_bool, as_choice, as_int, need_file, writable_dir
from custom.core.xray import check_view_paths
from custom.ct_refinement.coarse import check_refiner_inputs

VARIANTS = ("a", "b")


def _check_grid(variant, volume_size, scale_factor, channels=None) -> None:
    """Variant A upsamples by ``scale_factor`` (a power of two: one pixel-shuffle stage per factor 2), so the output
    side must be a multiple of it; variant B keeps the size and halves it once per extra level of ``channels``. A
    side that does not divide would silently come out on another grid."""
    scale = as_int(scale_factor, "scale_factor", 1)
    size = as_int(volume_size, "volume_size", 2)
    if variant == "a":
        if scale < 2 or scale & (scale - 1):
            raise InputError(f"scale_factor must be a power of two >= 2 for variant A, got {scale_factor}")
        step = scale
    else:
        step = 2 ** (len(channels) - 1) if channels else 4
    if size % step:
        raise InputError(
            f"volume_size must be a multiple of {step} for variant {variant.upper()}, got {volume_size} "
            f"(e.g. {max(step, size - size % step)})"
        )


def _check_cascade(coarse_source, cascade_num_inference_steps, cascade_num_samples) -> None:
    if str(coarse_source) == "cascade":
        as_int(cascade_num_inference_steps, "cascade_num_inference_steps", 1)
        as_int(cascade_num_samples, "cascade_num_samples", 1)


@bundle_check
def check_inference_request(
    variant,
    coarse_path="",
    frontal_path="",
    lateral_path="",
    ckpt_path="",
    output_dir="",
    volume_size=64,
    scale_factor=4,
    channels=None,
    coarse_source="file",
    cascade_num_inference_steps=10,
    cascade_num_samples=4,
    datalist="",
) -> None:
    """``inference.json`` (and variant B on top): variant, grid, weights, inputs, a writable output folder."""
    variant = as_choice(variant, "variant", VARIANTS)
    check_view_paths(frontal_path, lateral_path)
    check_refiner_inputs(variant, coarse_path, frontal_path, lateral_path)
    _check_grid(variant, volume_size, scale_factor, channels)
    need_file(ckpt_path, "ckpt_path", f"; set ckpt_path to variant {variant.upper()}'s weights")
    if coarse_path and not Path(str(coarse_path)).expanduser().exists():  # a file, or a DICOM series folder
        raise InputError(f"coarse_path {coarse_path}: no such file or folder")
    if not (coarse_path or frontal_path):
        need_file(datalist, "datalist", "; set dataset_dir to a prepared folder, or give coarse_path")
    _check_cascade(coarse_source, cascade_num_inference_steps, cascade_num_samples)
    writable_dir(output_dir, "output_dir")


@bundle_check
def check_training_request(
    variant, output_dir, volume_size=64, scale_factor=4, channels=None, resume=False, max_epochs=1, val_interval=1
) -> None:
    """``train.json`` and the configs layered on it: variant, grid, flags, epochs, a writable output folder."""
    variant = as_choice(variant, "variant", VARIANTS)
    _check_grid(variant, volume_size, scale_factor, channels)
    as_bool(resume, "resume")
    as_int(max_epochs, "max_epochs", 1)
    as_int(val_interval, "val_interval", 1)
    writable_dir(output_dir, "output_dir")
