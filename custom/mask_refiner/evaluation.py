"""Held-out evaluation of the mask refiner: coarse and refined masks side by side.

Per image: Dice and IoU (an empty prediction of an empty mask scores 1, so control images count instead of being
dropped), HD95 and surface Dice (MONAI metrics, with pixel spacing; HD95 is undefined when either mask is empty and
is then left out of its mean, with the count reported), the false-positive area on control images, and the mask
change (1 - Dice between the coarse and refined masks, what the refiner's ``min_change`` safeguard reads). Summary:
means, per-image Dice deltas, the share of images made worse, the gain per coarse-Dice quintile, and the gain on the
hard group (coarse Dice at or below the training set's hard threshold).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric

from custom.core.io import save_report
from custom.mask_refiner.data import MASK_THRESHOLD, dice, load_case
from custom.mask_refiner.safeguard import mask_change

HARM_TOLERANCE = 1e-3  # a Dice drop smaller than this is rounding, not harm


def mask_metrics(pred: np.ndarray, gt: np.ndarray, spacing=(1.0, 1.0), tolerance: float = 2.0) -> dict:
    """Dice, IoU, HD95 (mm) and surface Dice (tolerance in mm) of two (H, W) boolean masks."""
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    g = torch.from_numpy(gt[None, None].astype(np.float32))
    # ignore_empty=False: two empty masks agree perfectly (IoU 1), as for Dice
    out = {"dice": dice(pred, gt), "iou": float(MeanIoU(include_background=True, ignore_empty=False)(p, g))}
    if pred.any() and gt.any():
        out["hd95"] = float(HausdorffDistanceMetric(include_background=True, percentile=95)(p, g, spacing=spacing))
        surface = SurfaceDiceMetric(class_thresholds=[tolerance], include_background=True)
        out["surface_dice"] = float(surface(p, g, spacing=spacing))
    else:
        out["hd95"] = math.nan
        out["surface_dice"] = 1.0 if pred.any() == gt.any() else 0.0
    return out


@torch.no_grad()
def evaluate_refiner(network, data_dir, split: str = "test", out_dir=None, spacing=(1.0, 1.0), device="cpu") -> dict:
    """Evaluate ``network`` on a split of a refiner dataset folder; writes metrics.csv and summary.json to out_dir."""
    data_dir = Path(data_dir)
    splits = json.loads((data_dir / "refiner_splits.json").read_text())
    hard_threshold = splits.get("hard_threshold_dice")
    network = network.to(device).eval()
    rows = []
    for pid in splits[split]:
        x, gt = load_case(data_dir / pid)
        gt = gt > 0.5
        logits = network(torch.from_numpy(x)[None].to(device))[:, 0].float().cpu()
        prob = torch.sigmoid(logits[0]).numpy()
        coarse, refined = x[1] > MASK_THRESHOLD, prob > MASK_THRESHOLD
        control = not gt.any()
        row = {"case_id": pid, "control": control, "height": gt.shape[0]}
        for name, pred in (("coarse", coarse), ("refined", refined)):
            for k, v in mask_metrics(pred, gt, spacing).items():
                row[f"{name}_{k}"] = v
            row[f"{name}_fp_area"] = float(pred[~gt].sum() * spacing[0] * spacing[1])
        row["delta_dice"] = row["refined_dice"] - row["coarse_dice"]
        row["mask_change"] = float(mask_change(torch.from_numpy(x[1])[None], logits)[0])
        rows.append(row)

    def mean(key, sel):
        vals = [r[key] for r in sel if not (isinstance(r[key], float) and math.isnan(r[key]))]
        return (float(np.mean(vals)) if vals else math.nan), len(vals)

    lesion = [r for r in rows if not r["control"]]
    controls = [r for r in rows if r["control"]]
    summary = {
        "split": split,
        "images": len(rows),
        "controls": len(controls),
        "convention": "Dice/IoU with empty-vs-empty = 1; HD95 and surface Dice (2 mm) with pixel spacing "
        f"{list(spacing)} mm, HD95 only where both masks are non-empty; masks at probability {MASK_THRESHOLD}",
    }
    for m in ("dice", "iou", "hd95", "surface_dice"):
        for name in ("coarse", "refined"):
            value, n = mean(f"{name}_{m}", rows)
            summary[f"{name}_{m}"] = value
            if m == "hd95":
                summary[f"{name}_hd95_images"] = n
    for name in ("coarse", "refined"):
        summary[f"{name}_fp_area_controls"] = mean(f"{name}_fp_area", controls)[0]
    deltas = np.array([r["delta_dice"] for r in rows])
    summary["mean_delta_dice"] = float(deltas.mean()) if len(deltas) else math.nan
    summary["harm_rate"] = float((deltas < -HARM_TOLERANCE).mean()) if len(deltas) else math.nan
    summary["improved_rate"] = float((deltas > HARM_TOLERANCE).mean()) if len(deltas) else math.nan
    if lesion:
        order = sorted(lesion, key=lambda r: r["coarse_dice"])
        quintiles = np.array_split(np.arange(len(order)), min(5, len(order)))
        summary["by_coarse_dice_quintile"] = [
            {
                "quintile": q + 1,
                "images": len(idx),
                "coarse_dice": float(np.mean([order[i]["coarse_dice"] for i in idx])),
                "refined_dice": float(np.mean([order[i]["refined_dice"] for i in idx])),
                "harm_rate": float(np.mean([order[i]["delta_dice"] < -HARM_TOLERANCE for i in idx])),
            }
            for q, idx in enumerate(quintiles)
        ]
    if hard_threshold is not None:
        hard = [r for r in lesion if r["coarse_dice"] <= hard_threshold]
        summary["hard_threshold_dice"] = hard_threshold
        summary["hard"] = {
            "images": len(hard),
            "coarse_dice": mean("coarse_dice", hard)[0],
            "refined_dice": mean("refined_dice", hard)[0],
            "harm_rate": float(np.mean([r["delta_dice"] < -HARM_TOLERANCE for r in hard])) if hard else math.nan,
        }
    if out_dir is not None:
        save_report(rows, summary, out_dir)
    return summary
