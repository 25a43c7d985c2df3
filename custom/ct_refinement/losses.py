"""Losses of the two CT detail refiners (variants A and B), on CTs in window units ([-1, 1]).

Each loss is a weighted sum of named terms and keeps the unweighted value of every term of the last call in
``.last`` (for :class:`custom.core.handlers.LossComponentsLogger`). A term whose weight is 0 is not computed.

Perceptual terms need pretrained feature weights, and nothing may be downloaded: they run only when
``perceptual_weights`` names a local file, through MONAI's ``PerceptualLoss`` (torchvision ResNet-50 features on
2.5D slices, ``pretrained_path``); without a file their weight is 0.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from custom.core.losses import SeparableSSIMLoss
from custom.core.networks.filters import laplacian_3d, sobel_3d
from custom.core.networks.frequency import radial_frequency

logger = logging.getLogger(__name__)


def high_frequency_weight(shape, cutoff: float = 0.1, sharpness: float = 10.0, device=None) -> torch.Tensor:
    """``sigmoid(sharpness * (|f| - cutoff))`` on the ``rfftn`` grid of a (D, H, W) volume, |f| in cycles/voxel."""
    return torch.sigmoid(sharpness * (radial_frequency(shape, device) - cutoff))


def frequency_loss(pred: torch.Tensor, target: torch.Tensor, cutoff: float = 0.1, sharpness: float = 10.0):
    """Mean |w(f) (FFT(pred) - FFT(target))| over the spectrum, high frequencies weighted up.

    The weighting makes the loss pay for the fine detail (edges, small vessels) that a voxel-wise L1 lets blur.

    Orthonormal FFT, so the figure is on the scale of voxel differences; ``rfftn`` holds every independent
    coefficient of a real volume once (up to the mirrored last axis).
    """
    diff = torch.fft.rfftn((pred - target).float(), dim=(-3, -2, -1), norm="ortho")
    w = high_frequency_weight(pred.shape[-3:], cutoff, sharpness, pred.device)
    return (diff.abs() * w).mean()


def _perceptual(weights_path: str, key: str | None):
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual_weights {weights_path!r} is not a file: give a local ResNet-50 state dict, or leave "
            "perceptual_weights empty to train without the perceptual term"
        )
    from monai.losses import PerceptualLoss

    return PerceptualLoss(
        spatial_dims=3,
        network_type="resnet50",
        is_fake_3d=True,
        pretrained=True,
        pretrained_path=str(path),
        pretrained_state_dict_key=key,
    )


class _WeightedLoss(nn.Module):
    defaults: dict = {}

    def __init__(self, weights: dict | None, perceptual_weights: str = "", perceptual_key: str | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; the terms are {sorted(self.defaults)}")
        self.weights = {**self.defaults, **{k: float(v) for k, v in (weights or {}).items()}}
        if any(w < 0 or not math.isfinite(w) for w in self.weights.values()):
            raise ValueError(f"loss weights must be finite and non-negative, got {self.weights}")
        self.perceptual = None
        if perceptual_weights:
            self.perceptual = _perceptual(perceptual_weights, perceptual_key)
        elif self.weights.get("perceptual", 0) > 0:
            logger.warning(
                "no perceptual_weights file given: the perceptual term (weight %g) is off", self.weights["perceptual"]
            )
            self.weights["perceptual"] = 0.0
        self.last: dict = {}

    def _total(self, parts: dict) -> torch.Tensor:
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        return sum(self.weights[k] * v for k, v in parts.items())

    def _perceptual_term(self, pred, target):
        # the ResNet expects image-like intensities: map the window [-1, 1] to [0, 1]
        return self.perceptual((pred.float() + 1) / 2, (target.float() + 1) / 2)


class SuperResolutionLoss(_WeightedLoss):
    """Loss of :class:`custom.ct_refinement.super_resolution.SuperResolutionRefiner` (the `super_resolution` refiners).

    ``l1 * L1 + ssim * (1 - SSIM) + perceptual * P + edge * L1(Sobel) + multiscale * MS`` with default weights
    1.0, 2.0, 0.1, 0.1, 0.5 (SSIM weighted highest, to optimize structural similarity directly; Sobel edges for
    sharp boundaries; MS keeps the scales consistent). ``pred`` is the network's output: one (B, C, rD, rD, rD)
    tensor, or the list of its outputs at every scale, finest first (training mode); the full-resolution terms use
    the first. MS is the mean L1 of the coarser outputs against the target averaged down ("area") to their size;
    MONAI's ``DeepSupervisionLoss`` would shrink the target by nearest-neighbour sampling and sum the scales.

    Args:
        weights: term weights, overriding the defaults.
        ssim_win_size: Gaussian window of the 3D SSIM (at most the smallest side).
        data_range: intensity range of the inputs (2 for window units).
        perceptual_weights: local ResNet-50 state-dict file for the perceptual term ("" = term off).
        perceptual_key: key of the state dict inside that file, if nested.
    """

    defaults = {"l1": 1.0, "ssim": 2.0, "perceptual": 0.1, "edge": 0.1, "multiscale": 0.5}

    def __init__(
        self,
        weights: dict | None = None,
        ssim_win_size: int = 7,
        data_range: float = 2.0,
        perceptual_weights: str = "",
        perceptual_key: str | None = None,
    ):
        super().__init__(weights, perceptual_weights, perceptual_key)
        self.ssim = SeparableSSIMLoss(data_range=float(data_range), win_size=int(ssim_win_size))

    def forward(self, pred, target: torch.Tensor) -> torch.Tensor:
        preds = list(pred) if isinstance(pred, (list, tuple)) else [pred]
        full = preds[0].float()
        target = target.float()
        if full.shape != target.shape:
            raise ValueError(f"prediction {tuple(full.shape)} and target {tuple(target.shape)} differ in shape")
        w = self.weights
        parts = {"l1": F.l1_loss(full, target)}
        if w["ssim"]:
            parts["ssim"] = self.ssim(full, target)
        if w["perceptual"] and self.perceptual is not None:
            parts["perceptual"] = self._perceptual_term(full, target)
        if w["edge"]:
            parts["edge"] = F.l1_loss(sobel_3d(full), sobel_3d(target))
        if w["multiscale"] and len(preds) > 1:
            terms = [F.l1_loss(p.float(), F.interpolate(target, size=p.shape[-3:], mode="area")) for p in preds[1:]]
            parts["multiscale"] = torch.stack(terms).mean()
        return self._total(parts)


class DetailRefinementLoss(_WeightedLoss):
    """Loss of :class:`custom.ct_refinement.detail_refiner.DetailRefiner` (the `detail` refiner).

    ``l1 * L1 + frequency * F + gradient * L1(Laplacian) + perceptual * P + consistency * L1(pred, coarse)`` with
    default weights 1.0, 0.5, 0.3, 0.2, 0.1; F is :func:`frequency_loss` (weight ``sigmoid(10 (|f| - 0.1))``). F and
    the Laplacian term pay for lost detail; the consistency term keeps the refiner near the coarse anatomy, so it
    sharpens rather than invents.

    ``target`` is (B, 1, D, D, D), the ground truth, or (B, 2, D, D, D): ground truth and the coarse input (the
    label layout of the bundle's training data), which the consistency term needs; with one channel that term is
    skipped.

    Args:
        weights: term weights, overriding the defaults.
        cutoff, sharpness: the high-pass weight of the frequency term (cycles per voxel).
        perceptual_weights, perceptual_key: as :class:`SuperResolutionLoss`.
    """

    defaults = {"l1": 1.0, "frequency": 0.5, "gradient": 0.3, "perceptual": 0.2, "consistency": 0.1}

    def __init__(
        self,
        weights: dict | None = None,
        cutoff: float = 0.1,
        sharpness: float = 10.0,
        perceptual_weights: str = "",
        perceptual_key: str | None = None,
    ):
        super().__init__(weights, perceptual_weights, perceptual_key)
        self.cutoff, self.sharpness = float(cutoff), float(sharpness)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != 5 or target.shape[1] not in (1, 2):
            raise ValueError(f"target must be (B, 1 or 2, D, H, W) = ground truth[, coarse], got {tuple(target.shape)}")
        pred, gt = pred.float(), target[:, :1].float()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        w = self.weights
        parts = {"l1": F.l1_loss(pred, gt)}
        if w["frequency"]:
            parts["frequency"] = frequency_loss(pred, gt, self.cutoff, self.sharpness)
        if w["gradient"]:
            parts["gradient"] = F.l1_loss(laplacian_3d(pred), laplacian_3d(gt))
        if w["perceptual"] and self.perceptual is not None:
            parts["perceptual"] = self._perceptual_term(pred, gt)
        if w["consistency"] and target.shape[1] == 2:
            parts["consistency"] = F.l1_loss(pred, target[:, 1:2].float())
        return self._total(parts)
