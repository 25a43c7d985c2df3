"""Fixed 3D Laplacian and Sobel operators."""

import pytest
import torch

from custom.core.networks.filters import Laplacian3D, Sobel3D, gradient_magnitude_3d, laplacian_3d, sobel_3d


def test_laplacian_kills_constants_and_ramps_everywhere_including_borders():
    const = torch.full((2, 3, 6, 7, 5), 3.7)
    assert laplacian_3d(const).abs().max() < 1e-6
    z = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 6, 6)
    lap = laplacian_3d(z)
    assert lap[..., 1:-1, :, :].abs().max() < 1e-5  # a linear ramp has no curvature inside the volume


def test_laplacian_of_a_quadratic_is_its_constant_second_derivative():
    c = torch.arange(9.0)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    vol = (zz**2 + 2 * yy**2 + 3 * xx**2)[None, None]
    inner = laplacian_3d(vol)[0, 0, 1:-1, 1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 2 + 4 + 6), atol=1e-3)
    assert torch.equal(Laplacian3D()(vol), laplacian_3d(vol))


def test_sobel_measures_the_slope_along_each_axis_and_zero_on_constants():
    c = torch.arange(8.0)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    vol = (2 * zz - 3 * xx)[None, None]
    g = sobel_3d(vol)[:, :, 0, 1:-1, 1:-1, 1:-1]
    assert g.shape[1] == 3
    assert torch.allclose(g[:, 0], torch.full_like(g[:, 0], 2.0), atol=1e-4)
    assert g[:, 1].abs().max() < 1e-4
    assert torch.allclose(g[:, 2], torch.full_like(g[:, 2], -3.0), atol=1e-4)
    assert sobel_3d(torch.ones(1, 2, 5, 5, 5)).abs().max() < 1e-6
    assert Sobel3D()(vol).shape == (1, 3, 1, 8, 8, 8)
    mag = gradient_magnitude_3d(vol)[0, 0, 1:-1, 1:-1, 1:-1]
    assert torch.allclose(mag, torch.full_like(mag, 13**0.5), atol=1e-4)


def test_filters_reject_non_volumes():
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        laplacian_3d(torch.zeros(1, 8, 8))


def test_filters_give_monais_separable_filtering_numbers():
    """The shifted-view passes are a speed change only: the same numbers as MONAI's separable_filtering."""
    from monai.networks.layers import separable_filtering

    from custom.core.networks.filters import _filter

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, 7)
    for kernels in [((-0.5, 0.0, 0.5), (0.25, 0.5, 0.25), (0.25, 0.5, 0.25)), ((1.0,), (1.0, -2.0, 1.0), (1.0,))]:
        ref = separable_filtering(x, [torch.tensor(k) for k in kernels], mode="replicate")
        assert torch.allclose(_filter(x, kernels), ref, atol=1e-6)
