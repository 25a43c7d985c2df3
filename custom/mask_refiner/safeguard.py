"""The refiner's abstention safeguard: keep the coarse map where the refiner would only nudge it.

On real held-out slices the fine-tuned refiners harm mostly images whose coarse mask is already good, and on those
they change the mask little (lung boundaries moved by a few pixels, an already-fair tumour outline reshaped), while
their large edits are mostly corrections. So, per image: when the refined mask differs from the coarse mask by less
than ``min_change``, measured as 1 - Dice between the two masks, the refiner abstains and returns the coarse map.

``min_change`` is chosen on validation data (:func:`choose_min_change`): the value with the best mean validation
Dice, the largest one among equals, so that where validation cannot tell, the refiner abstains.
"""

from __future__ import annotations

import numpy as np
import torch

from custom.core.options import as_float
from custom.mask_refiner.data import MASK_THRESHOLD

# 0 (never abstain) to 1 (abstain unless the masks are disjoint), finer than a few dozen validation images resolve
MIN_CHANGE_GRID = tuple(round(0.01 * i, 2) for i in range(101))


def check_min_change(min_change) -> float:
    """``min_change`` as a float in [0, 1] (a share of the mask); an ``InputError`` (a ``ValueError``) otherwise."""
    return as_float(min_change, "min_change", 0.0, 1.0, hint=" (1 - Dice between the masks; 0 turns the safeguard off)")


def mask_change(coarse_prob: torch.Tensor, refined_logits: torch.Tensor, threshold: float = MASK_THRESHOLD):
    """Per image, 1 - Dice between the coarse mask and the refined mask; 0 when both are empty.

    Args:
        coarse_prob: (B, 1, H, W) or (B, H, W) coarse foreground probability in [0, 1].
        refined_logits: refined foreground logits of the same shape.
        threshold: probability above which a pixel is foreground, in both maps.

    Returns:
        (B,) float64 tensor in [0, 1]: 0 = the same mask, 1 = disjoint masks.
    """
    # the refined mask as the writer and the evaluation make it at the bundle's threshold (sigmoid, then 0.5 by default)
    coarse = (coarse_prob > threshold).flatten(1)
    refined = (torch.sigmoid(refined_logits.float()) > threshold).flatten(1)
    # float64, so that a change written to a CSV and read back compares with min_change as it did here
    both = (coarse & refined).sum(1).double()
    total = (coarse.sum(1) + refined.sum(1)).double()
    return 1 - torch.where(total > 0, 2 * both / total.clamp(min=1), torch.ones_like(total))


def abstain_small_changes(
    refined_logits: torch.Tensor,
    coarse_logits: torch.Tensor,
    coarse_prob: torch.Tensor,
    min_change: float,
    threshold: float = MASK_THRESHOLD,
) -> torch.Tensor:
    """The refined logits, except on images whose mask changes by less than ``min_change``: their coarse logits.

    Args:
        refined_logits: (B, 1, H, W) refined foreground logits.
        coarse_logits: (B, 1, H, W) logits of the coarse map (what the refiner returns when it abstains).
        coarse_prob: (B, 1, H, W) coarse foreground probability in [0, 1].
        min_change: the smallest change kept, as 1 - Dice between the coarse and refined masks, in [0, 1]; 0 keeps
            every refinement.
        threshold: probability above which a pixel is foreground.

    Returns:
        (B, 1, H, W) logits. Per image, all refined or all coarse: a tensor ``where`` rather than a Python branch,
        so that a traced (TorchScript) network keeps the per-image choice.
    """
    keep = mask_change(coarse_prob, refined_logits, threshold) >= min_change
    return torch.where(keep.view(-1, *([1] * (refined_logits.ndim - 1))), refined_logits, coarse_logits)


def guarded_dice(rows, min_change: float) -> np.ndarray:
    """Per-image Dice after the safeguard, from an unguarded evaluation's rows (``coarse_dice``, ``refined_dice``,
    ``mask_change`` each): the coarse Dice where the change is below ``min_change``, the refined Dice otherwise."""
    return np.array(
        [float(r["coarse_dice"]) if float(r["mask_change"]) < min_change else float(r["refined_dice"]) for r in rows]
    )


def choose_min_change(rows, grid=MIN_CHANGE_GRID) -> dict:
    """``min_change`` from an unguarded evaluation on validation images: the best mean Dice, the largest among equals.

    Args:
        rows: per-image dicts with ``coarse_dice``, ``refined_dice`` and ``mask_change`` (refiner-evaluate's
            metrics.csv rows of the network with ``min_change`` 0).
        grid: the candidate values.

    Returns:
        ``min_change`` and, on these images, ``coarse_dice``, ``refined_dice`` (min_change 0) and ``guarded_dice``
        (means), ``harm_rate`` and ``guarded_harm_rate`` (share of images whose Dice drops by more than the
        evaluation's tolerance), ``abstained`` (images given back unchanged that the refiner would have changed).
    """
    from custom.mask_refiner.evaluation import HARM_TOLERANCE

    rows = list(rows)
    if not rows:
        raise ValueError("choose_min_change needs at least one validation image")
    means = [float(guarded_dice(rows, m).mean()) for m in grid]
    best = max(means)
    # exact ties only: equal means come from the same images being kept, whatever the grid step
    chosen = max(m for m, v in zip(grid, means) if v >= best)
    coarse = np.array([float(r["coarse_dice"]) for r in rows])
    refined = np.array([float(r["refined_dice"]) for r in rows])
    guarded = guarded_dice(rows, chosen)
    changes = np.array([float(r["mask_change"]) for r in rows])
    return {
        "min_change": chosen,
        "images": len(rows),
        "coarse_dice": float(coarse.mean()),
        "refined_dice": float(refined.mean()),
        "guarded_dice": float(guarded.mean()),
        "harm_rate": float((refined - coarse < -HARM_TOLERANCE).mean()),
        "guarded_harm_rate": float((guarded - coarse < -HARM_TOLERANCE).mean()),
        "abstained": int(((changes > 0) & (changes < chosen)).sum()),
    }


def min_change_record(choice: dict, weights_sha256: str, validation_ids=()) -> dict:
    """What to keep next to weights chosen for: :func:`choose_min_change`'s ``choice`` on their validation images,
    tied to the weights by their SHA-256 (hex), so that :func:`recorded_min_change` never applies it to others."""
    return {
        "min_change": check_min_change(choice["min_change"]),
        "weights_sha256": str(weights_sha256).lower(),
        "validation_images": int(choice["images"]),
        "validation_ids": [str(i) for i in validation_ids],
        "selection": dict(choice),
        "chosen_by": "choose_min_change on the validation images evaluated with min_change 0: the best mean Dice, "
        "the largest value among equals",
    }


def recorded_min_change(record, weights_sha256: str) -> tuple[float | None, str]:
    """(``min_change``, "") of a :func:`min_change_record` made for the weights whose SHA-256 is ``weights_sha256``;
    (None, why) for a record of other weights or one without a valid value."""
    if not isinstance(record, dict):
        return None, "it is not a JSON object"
    recorded = record.get("weights_sha256")
    if not isinstance(recorded, str) or not recorded:
        return None, "it names no weights_sha256"
    if recorded.lower() != str(weights_sha256).lower():
        return None, f"it was chosen for other weights (SHA-256 {recorded[:12]}..., these are {weights_sha256[:12]}...)"
    try:
        return check_min_change(record.get("min_change")), ""
    except ValueError as e:
        return None, str(e)
