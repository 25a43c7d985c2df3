"""Regenerate the sample inputs each bundle ships in ``sample/``: ``python docs/make_samples.py``.

Every sample comes from a generator seed far above those of any training or validation set (the cascade's phantoms
used seeds 0-399, the refiners' 0-99 and 1000-1199, the mask refiner's stand-in data came from generator seed 1),
so no bundle has seen its sample:

- ``xray2ct_cascade_diffusion/sample/``: ``frontal.nii.gz`` and ``lateral.nii.gz``, the line-integral DRRs of
  phantom 100000 (``python -m custom phantoms --seed 100000 --size 128``, then ``python -m custom prepare --size
  128``, the preparation of the training data), area-averaged from 128 to the bundle's 64 px by the reader the
  bundle itself uses, so the network input is the same as from the 128 px originals; ``datalist.json`` names the
  case.
- ``ct_detail_refinement/sample/phantom_100000/``: ``coarse.nii.gz``, the cascade bundle's reconstruction of those
  two X-rays with its released weights and default sampling (10 DDIM steps, mean of 4 samples, seed 0), in HU,
  resampled as the refiner resamples it onto variant A's 16^3 input grid (20 mm voxels over the 320 mm cube),
  plus copies of the two X-rays, from which variant B runs the frozen cascade itself.
- ``mask_refiner_2d/sample/``: ``slice_100000.png`` (16-bit image) and ``slice_100000_probabilities.npy`` (the
  coarse foreground probability, (H, W) float16) of ``custom.mask_refiner.data.generate_source`` with seed 100000,
  one image with lesions, 128 x 192 px (smaller than the training images so the files stay small).

Running it again rewrites the same files; it needs the repository (the project's CLI and the cascade's weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SEED = 100000
CASE = f"phantom_{SEED}"
XRAY_SIZE = 64  # xray_size of the cascade's inference.json and of both refiner variants
MASK_WIDTH, MASK_HEIGHT = 128, 192


def _python(*args, cwd=None) -> None:
    """Run ``python <args>`` with the repository importable, failing loudly with the child's output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: python {' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def xray_sample(work: Path) -> Path:
    """The two X-rays of the held-out phantom, made as the training X-rays were, stored at the bundle's size."""
    from custom.core.physics import get_geometry
    from custom.core.xray import load_xray, save_xray, to_detector

    _python("-m", "custom", "phantoms", work / "phantoms", "--count", 1, "--size", 128, "--seed", SEED)
    _python("-m", "custom", "prepare", work / "phantoms", work / "prepared", "--size", 128, "--split", "test")
    case = work / "prepared" / "cases" / CASE
    out = BUNDLES / "xray2ct_cascade_diffusion" / "sample"
    out.mkdir(exist_ok=True)
    # the reader's own resampling (to_detector, what LoadXRayd does at inference) makes the small copy, so reading
    # the 64 px file gives exactly the network input the 128 px DRR would have given
    geometry = get_geometry("x2ctgan").resized(XRAY_SIZE)
    for view in ("frontal", "lateral"):
        small = to_detector(load_xray(case / f"{view}.nii.gz"), geometry)
        save_xray(small[0], geometry, out / f"{view}.nii.gz", description=f"DRR line integral, {CASE}")
    datalist = {"test": [{"case_id": CASE, "frontal": "frontal.nii.gz", "lateral": "lateral.nii.gz"}]}
    (out / "datalist.json").write_text(json.dumps(datalist, indent=4) + "\n")
    return out


def coarse_sample(work: Path, xrays: Path) -> None:
    """The cascade's reconstruction of the sample X-rays, on the grid of the refiner's default variant (A)."""
    from monai.bundle import ConfigParser

    from custom.core.ct import load_ct
    from custom.core.io import save_nifti
    from custom.core.transforms import preprocess_ct

    bundle = BUNDLES / "xray2ct_cascade_diffusion"
    _python(
        *("-m", "monai.bundle", "run", "--config_file", bundle / "configs" / "inference.json"),
        *("--bundle_root", bundle, "--datalist", xrays / "datalist.json", "--output_dir", work / "cascade"),
        *("--num_inference_steps", 10, "--num_samples", 4, "--seed", 0),
        cwd=work,
    )
    refiner = ConfigParser()
    refiner.read_config(str(BUNDLES / "ct_detail_refinement" / "configs" / "inference.json"))
    size = int(refiner["volume_size"]) // int(refiner["scale_factor"])
    # The 64^3 reconstruction takes about 240 KB even as int16 (its voxel noise does not compress). Variant A reads
    # it at 16^3 anyway, through the same preprocess_ct call as LoadCoarseCTd: the small file, already on that
    # grid, is taken as it is, so variant A sees exactly what it would see from the full reconstruction.
    ct = preprocess_ct(load_ct(work / "cascade" / CASE / "ct.nii.gz"), size)
    out = BUNDLES / "ct_detail_refinement" / "sample" / CASE
    out.mkdir(parents=True, exist_ok=True)
    note = f"{CASE}: cascade stage 1 reconstruction, HU"
    save_nifti(np.asarray(ct[0]), np.asarray(ct.affine), out / "coarse.nii.gz", description=note)
    for view in ("frontal", "lateral"):
        shutil.copyfile(xrays / f"{view}.nii.gz", out / f"{view}.nii.gz")


def mask_sample(work: Path) -> None:
    """One generated image with lesions and its deliberately imperfect coarse probability map."""
    from custom.mask_refiner.data import generate_source

    src = generate_source(work / "refiner", 1, 0, MASK_WIDTH, SEED, (MASK_HEIGHT, MASK_HEIGHT))
    out = BUNDLES / "mask_refiner_2d" / "sample"
    out.mkdir(exist_ok=True)
    shutil.copyfile(src / "images" / "patient_000.png", out / f"slice_{SEED}.png")
    # the foreground channel alone, in float16: the inference reader accepts (H, W) maps and the file is 4x smaller
    probs = np.load(src / "patient_000_probabilities.npy")
    np.save(out / f"slice_{SEED}_probabilities.npy", probs[1].astype(np.float16))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        xrays = xray_sample(work)
        coarse_sample(work, xrays)
        mask_sample(work)
    for path in sorted(BUNDLES.glob("*/sample/**/*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
