"""The residual super-resolution refiners (`super_resolution`, `super_resolution_16to64`)."""

import io

import pytest
import torch
import torch.nn.functional as F

from custom.ct_refinement.super_resolution import SuperResolutionRefiner


def test_default_size_is_the_seeds_two_million_parameters():
    n = sum(p.numel() for p in SuperResolutionRefiner().parameters())
    assert 1.9e6 < n < 2.3e6


def test_multiscale_outputs_in_training_and_one_tensor_in_eval():
    net = SuperResolutionRefiner(1, 4, (8, 4, 4), (1, 1, 1))
    x = torch.rand(2, 1, 4, 4, 4)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 16, 16, 16), (2, 1, 8, 8, 8), (2, 1, 4, 4, 4)]
    assert net.eval()(x).shape == (2, 1, 16, 16, 16)


def test_untrained_output_is_the_trilinear_upsample_plus_a_tenth_of_the_correction():
    torch.manual_seed(0)
    net = SuperResolutionRefiner(1, 2, (8, 4), (1, 1)).eval()
    x = torch.rand(1, 1, 6, 6, 6)
    up = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    assert torch.allclose(net(x), up, atol=1e-6)  # zero-initialised heads: exactly the interpolation
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    corr = net.corrections(x)[-1]
    assert corr.abs().max() > 1e-3
    assert torch.allclose(net(x), up + 0.1 * corr, atol=1e-6)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="power of 2"):
        SuperResolutionRefiner(scale_factor=3)
    with pytest.raises(ValueError, match="entries"):
        SuperResolutionRefiner(scale_factor=4, channels=(8, 4))
    with pytest.raises(ValueError, match="coarse CT"):
        SuperResolutionRefiner(1, 2, (4, 4), (1, 1))(torch.rand(1, 2, 4, 4, 4))


def test_channels_last_is_a_layout_only_same_weights_same_numbers():
    torch.manual_seed(0)
    plain = SuperResolutionRefiner(channels=(8, 4, 4), num_blocks=(1, 1, 1))
    for p in plain.parameters():  # non-zero heads, so the correction is part of what is compared
        torch.nn.init.normal_(p, std=0.1)
    fast = SuperResolutionRefiner(channels=(8, 4, 4), num_blocks=(1, 1, 1), channels_last=True)
    fast.load_state_dict(plain.state_dict(), strict=True)
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 6, 6, 6)
    plain.train(), fast.train()
    outs_plain, outs_fast = plain(x), fast(x)
    for a, b in zip(outs_plain, outs_fast):
        assert b.is_contiguous() and torch.allclose(a, b, atol=1e-5)
    sum(o.mean() for o in outs_fast).backward()
    assert fast.stem.weight.grad is not None
    buffer = io.BytesIO()
    torch.save(fast, buffer)  # the whole module stays picklable
