"""The `detail` refiner, guided by the two X-rays."""

import pytest
import torch

from custom.ct_refinement.detail_refiner import DetailRefiner

TINY = dict(channels=(4, 8), num_blocks=(1, 1), xray_channels=8, lift_channels=4, frequency_bins=4, geometry="parallel")


def test_default_size_is_about_five_million_parameters():
    n = sum(p.numel() for p in DetailRefiner().parameters())
    assert 4.5e6 < n < 5.5e6


def test_shapes_identity_at_init_and_xrays_matter_once_trained():
    torch.manual_seed(0)
    net = DetailRefiner(**TINY)
    coarse, xrays = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 2, 8, 8)
    out = net(coarse, xrays)
    assert out.shape == coarse.shape
    assert torch.equal(out, coarse)  # the correction head starts at zero
    torch.nn.init.normal_(net.head.weight, std=0.1)
    a, b = net(coarse, xrays), net(coarse, torch.rand(2, 2, 8, 8))
    assert not torch.allclose(a, coarse) and not torch.allclose(a, b)
    a.sum().backward()
    assert net.encoders[0].stem.weight.grad.abs().sum() > 0  # the X-ray guidance is trained through the lifting


def test_rejects_bad_inputs():
    net = DetailRefiner(**TINY)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 1, 6, 6, 6), torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="xrays"):
        net(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="levels"):
        DetailRefiner(channels=(4,), num_blocks=(1,))
