"""The metric convention of the project and the per-case CT metrics every report uses.

Convention: prediction and ground truth are compared in HU after clipping both to the training window (default
[-200, 200] HU); PSNR uses the window width as data range (400 HU); SSIM is 3D (MONAI ``SSIMMetric``'s definition,
Gaussian window 7, computed separably by :class:`custom.core.losses.SeparableSSIMLoss`: the same figure, about twice
as fast at 256^3) on the same clipped HU with the same data range; MAE is in HU. Optional columns: the DRR re-projection
error (mean absolute difference of frontal and lateral DRRs of prediction and truth, in network-input units, both
rendered from the windowed volumes), the sharpness ratio (mean Sobel gradient magnitude over that of the truth:
1 = as sharp as the truth, below 1 = blurrier) and X2CT-GAN's PSNR (for comparison with the literature only).
Every reported figure is a mean over cases.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.metrics import MAEMetric, PSNRMetric

from custom.core.losses import SeparableSSIMLoss
from custom.core.networks.filters import gradient_magnitude_3d
from custom.core.physics import DRRProjector, hu_to_mu
from custom.core.xray import line_integral_to_input

CONVENTION = (
    "HU clipped to the window {window}; PSNR with data range {range:g} HU; 3D SSIM (win 7, data range {range:g}); "
    "MAE in HU; DRR error = mean |DRR(pred) - DRR(gt)| of both views in line-integral/8 units, windowed volumes; "
    "psnr_x2ctgan = X2CT-GAN's convention for comparison with the literature only: the same clipped volumes on "
    "its [0, 2500] scale (HU + 1024), PSNR per axial slice with data range 2500, averaged over slices"
)
REFINEMENT_CONVENTION = (
    "HU clipped to the window {window}; PSNR with data range {range:g} HU; 3D SSIM (win 7, data range {range:g}); "
    "MAE in HU; sharpness = mean Sobel gradient magnitude / that of the ground truth (1 = as sharp as the truth)"
)
METRICS = ("psnr_hu", "psnr_x2ctgan", "ssim", "mae_hu", "drr_error")
REFINEMENT_METRICS = ("psnr_hu", "ssim", "mae_hu", "sharpness")
X2CTGAN_RANGE = 2500.0
SSIM_WINDOW = 7


def convention(window: Sequence[float], text: str = CONVENTION) -> str:
    """The convention sentence with the window and data range filled in."""
    lo, hi = (float(w) for w in window)
    return text.format(window=[lo, hi], range=hi - lo)


def psnr_x2ctgan(pred_hu: torch.Tensor, gt_hu: torch.Tensor) -> float:
    """Slice-averaged PSNR on X2CT-GAN's scale, for (X, Y, Z) volumes in HU (axial slices along Z).

    The +1024 shift to their [0, 2500] scale cancels in the difference; only the data range 2500 matters. Slices
    predicted exactly (infinite PSNR) are left out of the mean.
    """
    mse = ((pred_hu.float() - gt_hu.float()) ** 2).mean(dim=(0, 1))
    mse = mse[mse > 0]
    if mse.numel() == 0:
        return float("inf")
    return float((10 * torch.log10(X2CTGAN_RANGE**2 / mse)).mean())


def case_metrics(
    pred_hu: torch.Tensor, gt_hu: torch.Tensor, window, drr: DRRProjector | None = None, cube_mm: float = 320.0
) -> dict:
    """PSNR/SSIM/MAE (and DRR error when ``drr`` is given) of one (D, H, W) prediction in HU."""
    lo, hi = (float(w) for w in window)
    p, g = pred_hu.clamp(lo, hi).float()[None, None], gt_hu.clamp(lo, hi).float()[None, None]
    rng = hi - lo
    out = {
        "psnr_hu": float(PSNRMetric(max_val=rng)(p, g).mean()),
        "psnr_x2ctgan": psnr_x2ctgan(p[0, 0], g[0, 0]),
        "ssim": 1.0 - float(SeparableSSIMLoss(data_range=rng, win_size=SSIM_WINDOW)(p, g)),
        "mae_hu": float(MAEMetric()(p, g).mean()),
    }
    if drr is not None:
        sp = (cube_mm / p.shape[-1],) * 3
        drr_p = line_integral_to_input(drr(hu_to_mu(p), sp))
        drr_g = line_integral_to_input(drr(hu_to_mu(g), sp))
        out["drr_error"] = float((drr_p - drr_g).abs().mean())
    return out


def sharpness_ratio(vol_hu: torch.Tensor, gt_hu: torch.Tensor, window: Sequence[float]) -> float:
    """Mean gradient magnitude of ``vol_hu`` over that of ``gt_hu`` (both (D, H, W), clipped to ``window``)."""
    lo, hi = (float(w) for w in window)
    gv = gradient_magnitude_3d(vol_hu.float().clamp(lo, hi)[None, None]).mean()
    gg = gradient_magnitude_3d(gt_hu.float().clamp(lo, hi)[None, None]).mean()
    return float(gv / gg) if gg > 0 else float("nan")


def refinement_metrics(vol_hu: torch.Tensor, gt_hu: torch.Tensor, window: Sequence[float]) -> dict:
    """PSNR/SSIM/MAE (:func:`case_metrics`) and sharpness of one (D, H, W) volume in HU."""
    if vol_hu.shape != gt_hu.shape:
        raise ValueError(f"volume {tuple(vol_hu.shape)} and ground truth {tuple(gt_hu.shape)} differ in shape")
    out = case_metrics(vol_hu, gt_hu, window)
    out["sharpness"] = sharpness_ratio(vol_hu, gt_hu, window)
    return out
