"""The separable SSIM loss against MONAI's full-kernel one."""

import pytest
import torch
from monai.losses import SSIMLoss

from custom.core.losses import SeparableSSIMLoss


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_separable_ssim_equals_monai_ssim_in_value_and_gradient(reduction):
    torch.manual_seed(0)
    target = torch.rand(3, 2, 12, 11, 10) * 2 - 1
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    ours = SeparableSSIMLoss(data_range=2.0, win_size=7, reduction=reduction)(pred, target)
    (grad_ours,) = torch.autograd.grad(ours.sum(), pred)
    theirs = SSIMLoss(spatial_dims=3, data_range=2.0, win_size=7, reduction=reduction)(pred, target)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), pred)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-6)
    assert float(SeparableSSIMLoss(data_range=2.0)(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_separable_ssim_rejects_what_it_cannot_score():
    with pytest.raises(ValueError, match="reduction"):
        SeparableSSIMLoss(reduction="sum")
    with pytest.raises(ValueError, match="one shape"):
        SeparableSSIMLoss()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))
