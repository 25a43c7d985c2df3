"""The CT detail refinement bundle's request checks, run as the first step of its configs before any network or data
is loaded, so that a bad setting ends the run at once with one line that names the key to set."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from custom.core.bundle.errors import bundle_check
from custom.core.errors import InputError
from custom.core.options import as_bool, as_choice, as_int, need_file, writable_dir
from custom.core.xray import check_view_paths
from custom.ct_refinement.coarse import check_refiner_inputs

logger = logging.getLogger(__name__)

# refiner name -> the network it is ("super_resolution": SuperResolutionRefiner, "detail": DetailRefiner)
REFINERS = {
    "super_resolution": "super_resolution",  # 64^3 -> 256^3 (configs/*_super_resolution.json)
    "super_resolution_16to64": "super_resolution",  # 16^3 -> 64^3, the base configs (train.json, inference.json)
    "detail": "detail",  # 64^3 -> 64^3 with the two X-rays (configs/*_detail.json)
}
# the names of 0.3.0, accepted for one release (0.4.x) with a warning that names the new one
VARIANTS = ("a", "b")
RENAMED = {
    "a": (
        "super_resolution",
        "refiner 'super_resolution' (64^3 -> 256^3: configs/train_super_resolution.json, "
        "inference_super_resolution.json) or 'super_resolution_16to64' (the base configs train.json, inference.json)",
    ),
    "b": ("detail", "refiner 'detail' (configs/train_detail.json, inference_detail.json)"),
}
RENAMED_CONFIGS = {
    "train_variant_b.json": "train_detail.json",
    "inference_variant_b.json": "inference_detail.json",
    "model_variant_b.pt": "detail.pt",
}


def refiner_kind(refiner, variant="") -> str:
    """The network kind ('super_resolution' or 'detail') of ``refiner``, or of the deprecated ``variant`` when one
    is given (with a FutureWarning naming its new name; gone in 0.5.0)."""
    if variant not in (None, ""):
        if variant not in VARIANTS:
            raise InputError(
                f"variant must be one of a, b (deprecated names), got {variant!r}; name the refiner instead: "
                f"refiner must be one of {', '.join(REFINERS)}"
            )
        kind, new = RENAMED[variant]
        message = (
            f"variant {variant!r} is deprecated and goes in 0.5.0: use {new}; "
            "train_variant_b.json / inference_variant_b.json are now train_detail.json / inference_detail.json and "
            "models/model_variant_b.pt is models/detail.pt"
        )
        warnings.warn(message, FutureWarning, stacklevel=2)
        logger.warning(message)
        return kind
    return REFINERS[as_choice(refiner, "refiner", REFINERS)]


def _check_grid(kind, volume_size, scale_factor, channels=None) -> None:
    """The super-resolution refiner upsamples by ``scale_factor`` (a power of two: one pixel-shuffle stage per factor
    2), so the output side must be a multiple of it; the detail refiner keeps the size and halves it once per extra
    level of ``channels``. A side that does not divide would silently come out on another grid."""
    scale = as_int(scale_factor, "scale_factor", 1)
    size = as_int(volume_size, "volume_size", 2)
    name = "the super-resolution refiner" if kind == "super_resolution" else "the detail refiner"
    if kind == "super_resolution":
        if scale < 2 or scale & (scale - 1):
            raise InputError(f"scale_factor must be a power of two >= 2 for {name}, got {scale_factor}")
        step = scale
    else:
        step = 2 ** (len(channels) - 1) if channels else 4
    if size % step:
        raise InputError(
            f"volume_size must be a multiple of {step} for {name}, got {volume_size} "
            f"(e.g. {max(step, size - size % step)})"
        )


def _check_cascade(coarse_source, cascade_num_inference_steps, cascade_num_samples) -> None:
    if str(coarse_source) == "cascade":
        as_int(cascade_num_inference_steps, "cascade_num_inference_steps", 1)
        as_int(cascade_num_samples, "cascade_num_samples", 1)


def _check_tiles(kind, volume_size, scale_factor, tile_size, tile_overlap) -> None:
    """Tiles (crops) are sides of the coarse input; ``tile_overlap * tile_size`` must be whole so that every tile
    lands on whole output voxels (MONAI's sliding window rounds otherwise)."""
    if kind != "super_resolution" or tile_size in (None, "", 0):
        return
    tile = as_int(tile_size, "tile_size", 1)
    coarse = as_int(volume_size, "volume_size", 2) // as_int(scale_factor, "scale_factor", 1)
    overlap = float(tile_overlap)
    if not 0 <= overlap < 1:
        raise InputError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
    if tile < coarse and (tile * overlap != int(tile * overlap)):
        raise InputError(f"tile_overlap * tile_size must be a whole number of coarse voxels, got {overlap} * {tile}")


@bundle_check
def check_inference_request(
    refiner,
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
    variant="",
    tile_size=0,
    tile_overlap=0.25,
    output_size=0,
) -> None:
    """``inference.json`` (and a refiner's layer on top): refiner, grid, tiles, output size, weights, inputs, a
    writable output folder."""
    kind = refiner_kind(refiner, variant)
    refined = int(volume_size)  # the refiner's output side, whatever its input
    if output_size not in (None, "", 0) and not (isinstance(output_size, int) and output_size >= refined):
        raise InputError(
            f"output_size {output_size!r}: give the side in voxels of the written CT, at least the refiner's "
            f"{refined} (e.g. 256 for 1.25 mm voxels over the 320 mm cube), or 0 to keep {refined}"
        )
    check_view_paths(frontal_path, lateral_path)
    check_refiner_inputs(kind, coarse_path, frontal_path, lateral_path)
    _check_grid(kind, volume_size, scale_factor, channels)
    _check_tiles(kind, volume_size, scale_factor, tile_size, tile_overlap)
    hint = f"; set ckpt_path to the {refiner} refiner's weights"
    need_file(ckpt_path, "ckpt_path", hint)
    if coarse_path and not Path(str(coarse_path)).expanduser().exists():  # a file, or a DICOM series folder
        raise InputError(f"coarse_path {coarse_path}: no such file or folder")
    if not (coarse_path or frontal_path):
        need_file(datalist, "datalist", "; set dataset_dir to a prepared folder, or give coarse_path")
    _check_cascade(coarse_source, cascade_num_inference_steps, cascade_num_samples)
    writable_dir(output_dir, "output_dir")


@bundle_check
def check_training_request(
    refiner,
    output_dir,
    volume_size=64,
    scale_factor=4,
    channels=None,
    resume=False,
    max_epochs=1,
    val_interval=1,
    variant="",
    coarse_source="degrade",
    coarse_dir="",
    crop_size=0,
    tile_overlap=0.25,
    datalist="",
) -> None:
    """``train.json`` and the configs layered on it: refiner, grid, crops, coarse files, flags, epochs, a writable
    output folder."""
    kind = refiner_kind(refiner, variant)
    _check_grid(kind, volume_size, scale_factor, channels)
    _check_tiles(kind, volume_size, scale_factor, crop_size, tile_overlap)
    if str(coarse_source) == "file":
        _check_coarse_files(coarse_dir, datalist)
    as_bool(resume, "resume")
    as_int(max_epochs, "max_epochs", 1)
    as_int(val_interval, "val_interval", 1)
    writable_dir(output_dir, "output_dir")


def _check_coarse_files(coarse_dir, datalist) -> None:
    """``coarse_source`` 'file' in training: ``coarse_dir`` holds the coarse CTs as ``<case_id>/ct.nii.gz``, or every
    training and validation item names its own under ``coarse`` (e.g. a data list that pairs each case once with the
    cascade's output and once with the detail refiner's)."""
    if coarse_dir:
        if not Path(str(coarse_dir)).is_dir():
            raise InputError(f"coarse_dir {coarse_dir}: no such folder")
        return
    need = (
        "coarse_source 'file' needs coarse_dir: a folder of <case_id>/ct.nii.gz, as the cascade bundle's "
        "inference.json --output_dir writes them, or a 'coarse' path in every training and validation item of the "
        "data list; or set coarse_source to 'degrade' or 'cascade'"
    )
    if not datalist or not Path(str(datalist)).is_file():
        raise InputError(f"{need} (data list {datalist!r}: no such file)")
    try:
        with open(datalist) as f:
            content = json.load(f)
        items = [item for key in ("training", "validation") for item in content.get(key) or []]
        missing = [str(item.get("case_id", "?")) for item in items if not item.get("coarse")]
    except (ValueError, AttributeError, TypeError) as err:
        raise InputError(f"data list {datalist}: not a datalist.json of training and validation items ({err})")
    if not items:
        raise InputError(f"{need} (data list {datalist}: no training or validation items)")
    if missing:
        raise InputError(f"{need} (missing in {len(missing)} of {len(items)} items, e.g. {missing[0]!r})")
