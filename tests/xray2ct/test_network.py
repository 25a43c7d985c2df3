"""Cascade denoiser: shapes, conditioning, timestep normalization, depth lifting along the X-ray paths."""

import pytest
import torch

from custom.core.networks.blocks import TimestepEmbedding
from custom.core.networks.lifting import DepthLifting
from custom.xray2ct.network import CascadeDenoiser

TINY = dict(channels=(8, 8, 8), xray_channels=8, hidden_size=24, vit_depth=1, num_heads=2)


@pytest.mark.parametrize("use_prev,grid", [(False, 4), (True, 3)])
def test_output_shape_and_conditioning(use_prev, grid):
    torch.manual_seed(0)
    net = CascadeDenoiser(16, grid, use_prev, **TINY)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the zero-initialised head would hide the inputs
    x = torch.randn(2, 1, 16, 16, 16)
    xr = torch.rand(2, 2, 16, 16)
    prev = torch.randn(2, 1, 16, 16, 16) if use_prev else None
    out = net(x, torch.tensor([0.1, 0.9]), xr, prev)
    assert out.shape == x.shape
    other = net(x, torch.tensor([0.1, 0.9]), torch.rand(2, 2, 16, 16), prev)
    assert not torch.allclose(out, other)  # the X-rays matter
    later = net(x, torch.tensor([0.5, 0.5]), xr, prev)
    assert not torch.allclose(out, later)  # the timestep matters


def test_raw_timesteps_are_rejected():
    emb = TimestepEmbedding(8)
    emb(torch.tensor([0.0, 0.999]))
    with pytest.raises(ValueError, match="normalized"):
        emb(torch.tensor([999.0]))


def test_missing_prev_and_bad_shapes_are_clear_errors():
    net = CascadeDenoiser(16, 4, True, **TINY)
    with pytest.raises(ValueError, match="prev"):
        net(torch.randn(1, 1, 16, 16, 16), torch.rand(1), torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="xrays"):
        net(torch.randn(1, 1, 16, 16, 16), torch.rand(1), torch.rand(1, 1, 16, 16), torch.randn(1, 1, 16, 16, 16))


def test_depth_lifting_spreads_a_detector_spot_along_its_ray():
    """A bright frontal pixel lifts into a line along y through the matching (x, z); lateral views along x."""
    lift = DepthLifting(1, 1, "parallel", ("frontal", "lateral"))
    feats = torch.zeros(1, 1, 2, 32, 32)
    feats[0, 0, 0, 8, 16] = 1.0  # frontal: column 8 (patient's right half), middle row
    with torch.no_grad():
        lift.fuse.weight.fill_(1.0)
        lift.fuse.bias.zero_()
        vol = lift(feats, 32)[0, 0]
    x, y, z = torch.nonzero(vol > 0.5 * vol.max(), as_tuple=True)
    assert x.float().mean() > 16  # right side of the patient is +x
    assert y.unique().numel() > 20  # spread through the depth
    assert (z.float().mean() - 15.5).abs() < 2
