"""PixelShuffle3D: the shuffle layout and the ICNR initialisation."""

import pytest
import torch
from monai.networks.utils import pixelshuffle

from custom.core.networks.upsample import PixelShuffle3D


def _explicit_shuffle(x, r):
    """Output[c, r*d + i, r*h + j, r*w + k] = input[c*r^3 + i*r^2 + j*r + k, d, h, w], written out with loops."""
    b, cr, d, h, w = x.shape
    c = cr // r**3
    out = torch.empty(b, c, d * r, h * r, w * r)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                for k in range(r):
                    out[:, ch, i::r, j::r, k::r] = x[:, ch * r**3 + i * r * r + j * r + k]
    return out


@pytest.mark.parametrize("r", [2, 3])
def test_shuffle_equals_explicit_rearrangement(r):
    x = torch.randn(2, 2 * r**3, 3, 4, 2)
    assert torch.equal(pixelshuffle(x, 3, r), _explicit_shuffle(x, r))
    layer = PixelShuffle3D(5, 2, r)
    inp = torch.randn(1, 5, 3, 3, 3)
    y = layer(inp)
    assert y.shape == (1, 2, 3 * r, 3 * r, 3 * r)
    assert torch.allclose(y, _explicit_shuffle(layer.conv_block(inp), r), atol=1e-6)


def test_icnr_initial_upsample_has_no_checkerboard():
    torch.manual_seed(0)
    layer = PixelShuffle3D(4, 3, 2)
    x = torch.randn(1, 4, 5, 5, 5)
    y = layer(x)
    # every 2x2x2 block of the output is one value: nearest-neighbour upsampling of a convolution, no sub-voxel pattern
    blocks = y.view(1, 3, 5, 2, 5, 2, 5, 2)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1, :, :1].expand_as(blocks), atol=1e-6)
    # a randomly initialised sub-pixel convolution (no ICNR) does show a pattern
    torch.nn.init.kaiming_normal_(layer.conv_block.weight)
    y2 = layer(x).view(1, 3, 5, 2, 5, 2, 5, 2)
    assert (y2 - y2[:, :, :, :1, :, :1, :, :1]).abs().max() > 1e-2


def test_pixelshuffle3d_rejects_2d_input_and_bad_scale():
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        PixelShuffle3D(2)(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        PixelShuffle3D(2, 2, 0)
