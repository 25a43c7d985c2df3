"""Metric conventions of the X-ray -> CT evaluation, checked on closed-form cases."""

import math

import torch

from custom.core.metrics import CONVENTION, case_metrics, psnr_x2ctgan


def test_psnr_conventions_on_a_constant_error():
    gt = torch.zeros(8, 8, 8)
    pred = gt + 20.0  # 20 HU everywhere, inside the window
    m = case_metrics(pred, gt, (-200.0, 200.0), None)
    assert math.isclose(m["psnr_hu"], 20 * math.log10(400 / 20), rel_tol=1e-6)
    assert math.isclose(m["psnr_x2ctgan"], 20 * math.log10(2500 / 20), rel_tol=1e-5)
    assert math.isclose(m["mae_hu"], 20.0, rel_tol=1e-6)
    # the same reconstruction reads 15.9 dB better in X2CT-GAN's convention: the reason to state it next to numbers
    assert math.isclose(m["psnr_x2ctgan"] - m["psnr_hu"], 20 * math.log10(2500 / 400), rel_tol=1e-5)
    assert "data range 2500" in CONVENTION and "data range {range:g}" in CONVENTION


def test_x2ctgan_psnr_averages_over_axial_slices_and_skips_exact_ones():
    gt = torch.zeros(4, 4, 3)
    pred = gt.clone()
    pred[..., 0] = 10.0
    pred[..., 1] = 40.0  # slice 2 is exact and left out
    expected = (20 * math.log10(2500 / 10) + 20 * math.log10(2500 / 40)) / 2
    assert math.isclose(psnr_x2ctgan(pred, gt), expected, rel_tol=1e-5)
    assert psnr_x2ctgan(gt, gt) == float("inf")


def test_values_outside_the_window_are_clipped_before_scoring():
    gt = torch.full((8, 8, 8), -850.0)  # lung
    pred = torch.full((8, 8, 8), -200.0)  # the model's clipped lung
    assert case_metrics(pred, gt, (-200.0, 200.0), None)["mae_hu"] == 0.0
