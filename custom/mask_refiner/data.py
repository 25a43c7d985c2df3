"""Mask-refiner data: a generator of realistic stand-in data and the dataset setup.

``generate_source`` writes what a coarse segmentation pipeline would leave behind (its post-processing folder):
``images/<pid>.png`` (16-bit image slice), ``labels/<pid>.png`` (ground-truth mask), ``<pid>_probabilities.npy``
(2, H, W) coarse softmax, ``comprehensive_splits.json`` and ``patient_dice_scores.json``. Lesions vary in size,
contrast and count; the coarse segmenter is deliberately imperfect (blur, shift, erosion/dilation, missed and false
lesions, with a per-patient severity) so that coarse Dice spreads from poor to good; control images have no lesion.

``setup_dataset`` turns such a folder into the refiner layout: per patient ``softmax.npz``, ``image.npy``,
``entropy.npy``, ``distance.npy``, ``y_coord.npy``, ``mask.png`` and one ``refiner_splits.json`` with hardness.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from custom.core.errors import InputError
from custom.core.io import atomic_path, load_array, save_json, save_png

CHANNELS = ("softmax_bg", "softmax_fg", "image", "entropy", "distance", "y_coord")
# Probability above which a pixel is foreground: makes the coarse mask from the coarse map and the refined mask
# from the network's sigmoid, in training, validation, inference, the app and evaluation alike.
MASK_THRESHOLD = 0.5


def make_channels(prob_fg: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The refiner's six input channels (CHANNELS order) from a foreground probability map and its image.

    The image is scaled by its maximum (not per-image min-max: an all-dark image stays dark); the distance channel
    is that of the coarse mask ``prob_fg > 0.5``; the row coordinate runs from 0 (top) to 1 (bottom).
    """
    p = np.asarray(prob_fg, dtype=np.float32)
    img = np.asarray(image, dtype=np.float32)
    if p.ndim != 2 or img.shape != p.shape:
        raise InputError(f"image {img.shape} and probability map {p.shape} must be 2D and of the same size")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("the probability map must hold finite values in [0, 1]")
    if not np.all(np.isfinite(img)):
        raise InputError("the image holds NaN or infinite pixels")
    h, w = p.shape
    y = np.repeat((np.arange(h, dtype=np.float32) / max(h - 1, 1))[:, None], w, 1)
    img = img / max(float(img.max()), 1.0) if img.max() > 1 else img
    return np.stack([1 - p, p, img, entropy_map(p), signed_distance(p > MASK_THRESHOLD), y]).astype(np.float32)


def _blob(h, w, cy, cx, ry, rx, rng) -> np.ndarray:
    """An irregular lesion: an ellipse whose radius wobbles with a few random harmonics."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(rng.uniform(0, 0.15) * np.cos(k * ang + rng.uniform(0, 6.28)) for k in (2, 3, 5))
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return r <= wobble


def synth_case(rng: np.random.Generator, height: int, width: int, control: bool):
    """(image float32 in [0, 1], mask bool, coarse foreground probability float32, severity)."""
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = (((yy - h / 2) / (0.47 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2) <= 1
    img = 0.15 + 0.25 * body
    for _ in range(8):  # organs and smooth background structure
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.15, 0.85) * w
        s = rng.uniform(15, 60)
        img = img + body * rng.uniform(-0.08, 0.12) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    mask = np.zeros((h, w), bool)
    if not control:
        for _ in range(int(rng.integers(1, 5))):
            r_max = max(4.0, min(40.0, min(h, w) / 4))  # lesions of 4..40 px, smaller in small images
            for _attempt in range(20):
                ry, rx = rng.uniform(min(4.0, r_max), r_max), rng.uniform(min(4.0, r_max), r_max)
                cy, cx = rng.uniform(ry + 5, h - ry - 5), rng.uniform(rx + 5, w - rx - 5)
                if body[int(cy), int(cx)]:
                    break
            lesion = _blob(h, w, cy, cx, ry, rx, rng) & body
            mask |= lesion
            img = img + lesion * rng.uniform(0.08, 0.5)  # from subtle to conspicuous
    img = ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 0.02, img.shape)
    img = np.clip(img, 0, 1).astype(np.float32)

    # The coarse segmenter: a distorted, blurred version of the truth plus misses and false lesions.
    severity = rng.uniform(0, 1)
    coarse = mask.copy()
    if coarse.any():
        labels, n = ndimage.label(coarse)
        for i in range(1, n + 1):
            if rng.uniform() < 0.25 * severity:
                coarse[labels == i] = False  # missed lesion
        it = int(round(rng.uniform(0, 4) * severity))
        if it:
            coarse = (
                ndimage.binary_dilation(coarse, iterations=it)
                if rng.uniform() < 0.5
                else ndimage.binary_erosion(coarse, iterations=it)
            )
        shift = rng.normal(0, 3 * severity, 2)
        coarse = ndimage.shift(coarse.astype(np.float32), shift, order=0) > 0.5
    for _ in range(int(rng.poisson(1.2 * severity + (0.3 if control else 0)))):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        coarse |= _blob(h, w, cy, cx, rng.uniform(3, 15), rng.uniform(3, 15), rng) & body  # false lesion
    sdf = ndimage.distance_transform_edt(~coarse) - ndimage.distance_transform_edt(coarse)
    sharpness = rng.uniform(0.4, 1.5) / (1 + 2 * severity)
    prob = 1 / (1 + np.exp(np.clip(sdf * sharpness + rng.normal(0, 0.3, sdf.shape), -30, 30)))
    prob = ndimage.gaussian_filter(prob, 1.0 + 2 * severity).astype(np.float32)
    return img, mask, prob, float(severity)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; two empty masks agree perfectly (1.0)."""
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def generate_source(
    out_dir, n_patients: int = 60, n_controls: int = 12, width: int = 256, seed: int = 0, heights=(300, 1000)
) -> Path:
    """Write a stand-in ``postprocess_dir`` (see module docstring); returns its path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"patient_{i:03d}" for i in range(n_patients)] + [f"control_{i:03d}" for i in range(n_controls)]
    scores = {}
    for pid in ids:
        h = int(rng.integers(heights[0], heights[1] + 1))
        img, mask, prob, _ = synth_case(rng, h, width, pid.startswith("control"))
        save_png((img * 65535).astype(np.uint16), out / "images" / f"{pid}.png")
        save_png((mask * 255).astype(np.uint8), out / "labels" / f"{pid}.png")
        with atomic_path(out / f"{pid}_probabilities.npy") as tmp:
            np.save(tmp, np.stack([1 - prob, prob]).astype(np.float32))
        scores[pid] = dice(prob > MASK_THRESHOLD, mask)
    order = rng.permutation(len(ids))
    n_test, n_val = max(1, len(ids) // 5), max(1, len(ids) // 10)
    splits = {
        "test": sorted(ids[i] for i in order[:n_test]),
        "val": sorted(ids[i] for i in order[n_test : n_test + n_val]),
        "train": sorted(ids[i] for i in order[n_test + n_val :]),
    }
    save_json(splits, out / "comprehensive_splits.json")
    save_json(scores, out / "patient_dice_scores.json")
    return out


def entropy_map(prob: np.ndarray) -> np.ndarray:
    """Binary entropy of the foreground probability, in bits (0..1)."""
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


def signed_distance(mask: np.ndarray, clip: float = 50.0, spacing=None) -> np.ndarray:
    """Signed distance to the mask boundary, negative inside, clipped to ``clip`` and scaled to [-1, 1].

    An empty mask is +1 everywhere (far outside) and a full mask -1 everywhere: a plain distance transform of those
    measures to the image corner and would be meaningless.
    """
    m = mask.astype(bool)
    if not m.any():
        return np.ones(m.shape, np.float32)
    if m.all():
        return -np.ones(m.shape, np.float32)
    d = ndimage.distance_transform_edt(~m, sampling=spacing) - ndimage.distance_transform_edt(m, sampling=spacing)
    return (np.clip(d, -clip, clip) / clip).astype(np.float32)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


def setup_dataset(postprocess_dir, output_dir, hard_fraction: float = 0.20) -> dict:
    """Build the refiner dataset from a ``postprocess_dir``; returns the splits dict written to disk."""
    src, out = Path(postprocess_dir), Path(output_dir)
    for name in ("comprehensive_splits.json", "patient_dice_scores.json"):
        if not (src / name).is_file():
            raise InputError(f"{src}: missing {name}; is this a postprocess folder?")
    if not 0 < hard_fraction < 1:
        raise InputError(f"hard_fraction must be in (0, 1), got {hard_fraction}")
    splits = json.loads((src / "comprehensive_splits.json").read_text())
    scores = json.loads((src / "patient_dice_scores.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for pid in sorted(set(sum((list(v) for v in splits.values()), []))):
        case = out / pid
        if (case / "mask.png").is_file():
            continue  # finished earlier (mask.png is written last)
        prob_path = src / f"{pid}_probabilities.npy"
        if not prob_path.is_file():
            raise InputError(f"{prob_path}: missing probability map for {pid}")
        probs = load_array(prob_path).astype(np.float32)
        if probs.ndim != 3 or probs.shape[0] != 2:
            raise InputError(f"{prob_path}: expected shape (2, H, W), got {probs.shape}")
        img = _load_image_2d(_find_image(src / "images", pid)).astype(np.float32)
        gt = _load_image_2d(_find_image(src / "labels", pid)) > 0
        if img.shape != probs.shape[1:] or gt.shape != probs.shape[1:]:
            raise InputError(f"{pid}: image {img.shape}, mask {gt.shape} and probabilities {probs.shape} disagree")
        case.mkdir(exist_ok=True)
        chans = make_channels(probs[1], img)
        arrays = {f"{CHANNELS[i]}.npy": chans[i] for i in range(2, len(CHANNELS))}
        with atomic_path(case / "softmax.npz") as tmp:
            np.savez_compressed(tmp, softmax=probs)
        for name, arr in arrays.items():
            with atomic_path(case / name) as tmp:
                np.save(tmp, arr)
        save_png((gt * 255).astype(np.uint8), case / "mask.png")
    train = [p for p in splits.get("train", []) if not p.startswith("control")]
    ranked = sorted(train, key=lambda p: scores.get(p, 1.0))
    n_hard = max(1, int(round(hard_fraction * len(ranked)))) if ranked else 0
    hard = set(ranked[:n_hard])
    hardness = {}
    for p in sum((list(v) for v in splits.values()), []):
        hardness[p] = "control" if p.startswith("control") else ("hard" if p in hard else "random")
    result = {
        "train": splits.get("train", []),
        "val": splits.get("val", []),
        "test": splits.get("test", []),
        "hardness": hardness,
        "coarse_dice": scores,
        "hard_fraction": hard_fraction,
        "hard_threshold_dice": max((scores[p] for p in hard), default=None),
    }
    save_json(result, out / "refiner_splits.json")
    return result


def load_case(case_dir) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (6, H, W) in CHANNELS order, mask (H, W) float32) of a refiner case folder."""
    d = Path(os.fspath(case_dir))
    probs = load_array(d / "softmax.npz", "softmax")
    chans = [probs[0], probs[1]] + [load_array(d / f"{n}.npy") for n in CHANNELS[2:]]
    mask = (_read_png(d / "mask.png") > 0).astype(np.float32)
    return np.stack(chans).astype(np.float32), mask


class LoadRefinerCased:
    """Dictionary transform: ``{"case_dir": path}`` -> ``image`` (6, H, W), ``label`` (3, H, W), ``case_id``.

    The label is mask, valid-pixel mask and boundary distance (:func:`custom.mask_refiner.losses.refiner_label`).
    """

    def __call__(self, data: dict) -> dict:
        import torch

        from custom.mask_refiner.losses import refiner_label

        d = Path(str(data["case_dir"]))
        x, mask = load_case(d)
        return {**data, "image": torch.from_numpy(x), "label": torch.from_numpy(refiner_label(mask)), "case_id": d.name}


def refiner_datalist(data_dir, split: str) -> list[dict]:
    """``[{"case_dir": ..., "hardness": ...}]`` of a split (train/val/test) of a refiner dataset folder."""
    d = Path(str(data_dir))
    path = d / "refiner_splits.json"
    if not path.is_file():
        raise InputError(f"{d}: no refiner_splits.json; run `python -m custom refiner-setup` first")
    splits = json.loads(path.read_text())
    return [{"case_dir": str(d / p), "hardness": splits["hardness"].get(p, "random")} for p in splits[split]]


IMAGE_SUFFIXES = (".png", ".nii.gz", ".nii", ".dcm", ".npy", ".tif", ".tiff")


def _find_image(folder: Path, pid: str) -> Path:
    """``folder/<pid><suffix>`` for the first supported suffix (PNG, NIfTI, DICOM, NumPy, TIFF)."""
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{pid}{suffix}").is_file():
            return folder / f"{pid}{suffix}"
    raise InputError(f"{folder}: no image for {pid} (looked for {', '.join(IMAGE_SUFFIXES)})")


def _load_image_2d(path: Path) -> np.ndarray:
    name = path.name.lower()
    if name.endswith(".npy"):
        return load_array(path)
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        return _read_png(path).astype(np.float32)
    from custom.core.xray import load_xray  # DICOM and NIfTI slices: the radiograph reader handles both

    return np.asarray(load_xray(path)[0]).T  # (U, V) -> (rows, cols)


class PrepareRefinerInputd:
    """Dictionary transform for inference: ``{"image": path, "probabilities": path}`` -> ``image`` (6, H, W).

    The image may be PNG, NIfTI, DICOM or .npy; the probabilities a (2, H, W) softmax or an (H, W) foreground map
    as .npy. Keeps ``case_id`` (the image's file name), the raw image for the overlay and ``image_path`` (a DICOM
    image's header goes into the segmentation written for it).
    """

    def __call__(self, data: dict) -> dict:
        import torch

        for key in ("image", "probabilities"):
            if not data.get(key) or not Path(str(data[key])).is_file():
                raise InputError(f"{key}: no such file {data.get(key)!r}; set {key}_path")
        img_path, prob_path = Path(str(data["image"])), Path(str(data["probabilities"]))
        image = _load_image_2d(img_path).astype(np.float32)
        probs = load_array(prob_path).astype(np.float32)
        fg = probs[1] if probs.ndim == 3 and probs.shape[0] == 2 else probs
        if fg.ndim != 2:
            raise InputError(f"{prob_path}: expected (2, H, W) or (H, W) probabilities, got {probs.shape}")
        x = make_channels(fg, image)
        name = img_path.name
        for suffix in (".nii.gz", ".nii", ".png", ".npy", ".dcm"):
            name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
        return {"image": torch.from_numpy(x), "case_id": name, "image_path": str(img_path)}
