"""Losses of the CT detail refiners: zero on identical inputs, weights respected, components kept in ``.last``."""

import pytest
import torch
import torch.nn.functional as F

from custom.ct_refinement.losses import DetailRefinementLoss, SuperResolutionLoss, frequency_loss


def _vol(seed, shape=(2, 1, 8, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_super_resolution_loss_is_zero_for_identical_inputs_at_every_scale():
    loss = SuperResolutionLoss(ssim_win_size=3)
    gt = _vol(0)
    preds = [gt, F.interpolate(gt, size=(4, 4, 4), mode="area"), F.interpolate(gt, size=(2, 2, 2), mode="area")]
    assert float(loss(preds, gt)) == pytest.approx(0.0, abs=1e-5)
    assert set(loss.last) == {"l1", "ssim", "edge", "multiscale"}  # no perceptual weights file: term off
    assert all(abs(v) < 1e-5 for v in loss.last.values())
    assert loss.weights["perceptual"] == 0.0


def test_super_resolution_loss_weights_are_respected():
    gt, pred = _vol(0), _vol(1)
    preds = [pred, F.interpolate(pred, size=(4, 4, 4), mode="area")]
    loss = SuperResolutionLoss(ssim_win_size=3)
    total = loss(preds, gt)
    assert total == pytest.approx(sum(loss.weights[k] * v for k, v in loss.last.items()), rel=1e-5)
    assert all(v > 0 for v in loss.last.values())
    assert loss.weights == {"l1": 1.0, "ssim": 2.0, "perceptual": 0.0, "edge": 0.1, "multiscale": 0.5}
    only_l1 = SuperResolutionLoss({"ssim": 0, "edge": 0, "multiscale": 0}, ssim_win_size=3)
    assert only_l1(preds, gt) == pytest.approx(float(F.l1_loss(pred, gt)), rel=1e-6)
    assert set(only_l1.last) == {"l1"}
    doubled = SuperResolutionLoss({"edge": 0.2}, ssim_win_size=3)
    assert doubled(preds, gt) - total == pytest.approx(0.1 * loss.last["edge"], rel=1e-4)


def test_detail_loss_is_zero_for_identical_inputs_and_uses_the_coarse_channel():
    loss = DetailRefinementLoss()
    gt, coarse = _vol(0), _vol(2)
    assert float(loss(gt, torch.cat([gt, gt], 1))) == pytest.approx(0.0, abs=1e-6)
    assert set(loss.last) == {"l1", "frequency", "gradient", "consistency"}
    total = loss(gt, torch.cat([gt, coarse], 1))
    assert loss.last["l1"] == 0 and loss.last["consistency"] > 0
    assert total == pytest.approx(0.1 * loss.last["consistency"], rel=1e-5)
    loss(gt, gt)  # ground truth only: no consistency term
    assert "consistency" not in loss.last


def test_detail_loss_weights_are_respected():
    gt, pred = _vol(0), _vol(1)
    loss = DetailRefinementLoss()
    total = loss(pred, gt)
    assert total == pytest.approx(sum(loss.weights[k] * v for k, v in loss.last.items()), rel=1e-5)
    no_freq = DetailRefinementLoss({"frequency": 0.0})
    assert total - no_freq(pred, gt) == pytest.approx(0.5 * loss.last["frequency"], rel=1e-4)


def test_frequency_loss_weights_high_frequencies_up():
    gt = torch.zeros(1, 1, 16, 16, 16)
    z = torch.arange(16.0).view(1, 1, 16, 1, 1)
    low = torch.cos(2 * torch.pi * z / 16).expand_as(gt)  # 1/16 cycle per voxel: weight sigmoid(10 (0.06 - 0.1))
    high = torch.cos(2 * torch.pi * 6 * z / 16).expand_as(gt)  # 0.375 cycles per voxel: weight near 1
    assert frequency_loss(gt, gt) == 0
    assert frequency_loss(high, gt) > 1.5 * frequency_loss(low, gt)


def test_bad_weights_and_missing_perceptual_file_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown loss terms"):
        SuperResolutionLoss({"lpips": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        DetailRefinementLoss({"l1": -1.0})
    with pytest.raises(FileNotFoundError, match="perceptual_weights"):
        DetailRefinementLoss(perceptual_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="differ in shape"):
        SuperResolutionLoss()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 16, 16, 16))
