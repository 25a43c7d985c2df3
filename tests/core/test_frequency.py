"""Frequency attention: identity at initialisation, amplitude-only re-weighting (phase kept), shapes."""

import pytest
import torch

from custom.core.networks.frequency import FrequencyAttention, radial_frequency


def test_identity_at_initialisation():
    x = torch.randn(2, 3, 6, 8, 7)
    assert torch.allclose(FrequencyAttention(3)(x), x, atol=1e-5)


def test_phase_is_preserved_and_high_frequencies_are_emphasized():
    torch.manual_seed(0)
    att = FrequencyAttention(2, num_bins=4)
    with torch.no_grad():
        att.profile.copy_(torch.tensor([[0.0, 0.5, 1.0, 1.5], [0.0, -0.5, -1.0, -1.5]]))
        torch.nn.init.normal_(att.mlp[-1].weight, std=0.3)
    x = torch.randn(1, 2, 8, 8, 8)
    y = att(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    fx, fy = torch.fft.rfftn(x, dim=(-3, -2, -1)), torch.fft.rfftn(y, dim=(-3, -2, -1))
    strong = fx.abs() > 1e-3
    # same phase: the ratio of the coefficients is real and positive
    ratio = fy[strong] / fx[strong]
    assert ratio.imag.abs().max() < 1e-3 * ratio.real.abs().max()
    assert ratio.real.min() > 0
    assert not torch.allclose(y, x, atol=1e-3)
    # channel 0 learned to amplify high frequencies, channel 1 to damp them
    r = radial_frequency((8, 8, 8))
    hi, lo = r > 0.35, (r > 0) & (r < 0.15)
    gain = (fy.abs() / fx.abs().clamp(min=1e-6))[0]
    assert gain[0][hi].mean() > gain[0][lo].mean()
    assert gain[1][hi].mean() < gain[1][lo].mean()


def test_gradients_reach_the_learned_profile():
    att = FrequencyAttention(2)
    att(torch.randn(1, 2, 4, 4, 4)).pow(2).sum().backward()
    assert att.profile.grad is not None and att.profile.grad.abs().sum() > 0


def test_rejects_wrong_channels():
    with pytest.raises(ValueError, match="expected"):
        FrequencyAttention(4)(torch.randn(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="num_bins"):
        FrequencyAttention(4, num_bins=1)
