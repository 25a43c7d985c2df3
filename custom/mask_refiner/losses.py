"""Loss of the mask refiner: batch Dice + BCE + boundary (surface) loss, over the unpadded pixels only.

Images of different heights are padded to a common size per batch; the label carries the padding mask, so padding
changes neither any term nor its scale.

Label layout (B, 3, H, W): ground-truth mask, valid-pixel mask (0 on padding), and ``phi``, the signed distance to
the ground-truth boundary (positive outside, negative inside, in pixels / ``phi_scale``; zero for an empty mask),
computed per image before padding (:func:`refiner_label`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from scipy import ndimage
from torch import nn

PHI_SCALE = 100.0


def refiner_label(mask: np.ndarray, phi_scale: float = PHI_SCALE, spacing=None) -> np.ndarray:
    """(3, H, W) label of one image: mask, ones (valid), signed distance ``phi`` (Kervadec et al. 2019)."""
    m = mask.astype(bool)
    if m.any() and not m.all():
        phi = ndimage.distance_transform_edt(~m, sampling=spacing) - ndimage.distance_transform_edt(m, sampling=spacing)
    else:
        phi = np.zeros(m.shape)  # no boundary: no surface term (empty controls are handled by Dice and BCE)
    return np.stack([m.astype(np.float32), np.ones(m.shape, np.float32), (phi / phi_scale).astype(np.float32)])


class RefinerLoss(nn.Module):
    """``w_dice * Dice + w_bce * BCE + w_surface * Surface`` on logits (B, 1, H, W) against a (B, 3, H, W) label.

    * Dice is a batch Dice (MONAI ``DiceLoss(batch=True)``): an empty control image still gets a gradient from the
      batch's foreground sum, where a per-image Dice on an empty mask is constant.
    * BCE and the surface term are means over valid pixels. Not MONAI's ``BoundaryLoss``, which takes no pixel
      spacing and averages over padding too; not ``MaskedLoss`` for BCE, which would zero the padded logits and
      still count them (log 2 each) instead of leaving them out.

    Args:
        weights: dict with ``dice``, ``bce``, ``surface`` (default 1.0, 0.5, 0.1).
    """

    def __init__(self, weights: dict | None = None):
        super().__init__()
        self.weights = {"dice": 1.0, "bce": 0.5, "surface": 0.1, **(weights or {})}
        self.dice = MaskedDiceLoss(sigmoid=False, batch=True)
        self.last: dict = {}

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.shape[1] != 3:
            raise ValueError(f"label must be (B, 3, H, W) = mask, valid, phi; got {tuple(label.shape)}")
        gt, valid, phi = label[:, :1].float(), label[:, 1:2].float(), label[:, 2:3].float()
        logits = logits.float()
        p = torch.sigmoid(logits) * valid
        n_valid = valid.sum().clamp(min=1.0)
        parts = {
            "dice": self.dice(p, gt, mask=valid),
            "bce": F.binary_cross_entropy_with_logits(logits, gt, weight=valid, reduction="sum") / n_valid,
            "surface": (p * phi).sum() / n_valid,
        }
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        return sum(self.weights[k] * v for k, v in parts.items())
