"""HU window (torch functions and MONAI transforms) and CT geometry preprocessing."""

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from monai.data import MetaTensor

from custom.core.ct import check_hu
from custom.core.errors import InputError
from custom.core.transforms import (
    DEFAULT_WINDOW,
    hu_to_window,
    preprocess_ct,
    window_to_hu,
)
from custom.datasets.phantom import chest_phantom, phantom_affine

HU = torch.tensor([-3000.0, -1024.0, -1000.0, -200.0, -150.0, 0.0, 37.5, 200.0, 250.0, 3071.0])


# ------------------------------------------------------------------------------------------------------ HU window


def test_default_window_maps_ends_to_minus_one_and_one():
    assert DEFAULT_WINDOW == (-200.0, 200.0)
    x = hu_to_window(torch.tensor([-200.0, 0.0, 200.0, 100.0]))
    assert torch.allclose(x, torch.tensor([-1.0, 0.0, 1.0, 0.5]))


def test_window_functions_are_inverse_on_the_window_and_clip_outside():
    x = hu_to_window(HU)
    assert x.min() == -1 and x.max() == 1
    back = window_to_hu(x)
    assert torch.allclose(back, HU.clamp(-200, 200), atol=1e-4)
    inside = torch.linspace(-1, 1, 101)
    assert torch.allclose(hu_to_window(window_to_hu(inside)), inside, atol=1e-6)
    # values outside [-1, 1] are clipped by default and extrapolated with clip=False
    assert window_to_hu(torch.tensor([1.5])).item() == 200.0
    assert window_to_hu(torch.tensor([1.5]), clip=False).item() == pytest.approx(300.0)


def test_wider_window_is_a_parameter():
    w = (-1000.0, 1000.0)
    x = hu_to_window(HU, w)
    assert torch.allclose(x[HU == -1000.0], torch.tensor(-1.0))
    assert torch.allclose(x[HU == 0.0], torch.tensor(0.0))
    assert torch.allclose(x[HU == 250.0], torch.tensor(0.25))
    assert torch.allclose(window_to_hu(x, w), HU.clamp(-1000, 1000), atol=1e-4)
    # the default window would have saturated 250 HU
    assert hu_to_window(torch.tensor([250.0])).item() == 1.0


def test_window_is_differentiable():
    hu = torch.tensor([-100.0, 50.0, 300.0], requires_grad=True)
    hu_to_window(hu).sum().backward()
    assert torch.allclose(hu.grad, torch.tensor([2 / 400, 2 / 400, 0.0]))


@pytest.mark.parametrize("window", [(200.0, -200.0), (5.0, 5.0)])
def test_empty_window_is_rejected(window):
    with pytest.raises(ValueError, match="lo < hi"):
        hu_to_window(HU, window)


@pytest.mark.parametrize("window", [DEFAULT_WINDOW, (-1000.0, 1000.0), (-1024.0, 3071.0)])
def test_monai_transforms_agree_with_torch_functions(window):
    """The bundles' configs window with MONAI's ScaleIntensityRanged; losses and writers use the torch functions."""
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRanged

    lo, hi = window
    hu = torch.linspace(-2000, 3500, 300).reshape(1, 10, 30)
    fwd = ScaleIntensityRanged(keys="ct", a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)({"ct": hu.clone()})
    assert torch.allclose(torch.as_tensor(fwd["ct"]), hu_to_window(hu, window), atol=1e-5)
    x = torch.linspace(-1.5, 1.5, 61)[None]
    inv = torch.as_tensor(ScaleIntensityRange(a_min=-1.0, a_max=1.0, b_min=lo, b_max=hi, clip=True)(x))
    assert torch.allclose(inv, window_to_hu(x, window), atol=1e-3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lo=st.floats(-1500, 1500),
    width=st.floats(10, 3000),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_window_round_trip_property(lo, width, shape, dtype, seed):
    hi = lo + width
    g = torch.Generator().manual_seed(seed)
    hu = (torch.rand(shape, generator=g, dtype=torch.float64) * 6000 - 3000).to(dtype)
    x = hu_to_window(hu, (lo, hi))
    assert x.dtype == dtype and x.shape == hu.shape
    assert torch.all(x >= -1) and torch.all(x <= 1)
    eps = torch.finfo(dtype).eps
    tol_hu = 8 * eps * max(abs(lo), abs(hi), width)
    expected = hu.double().clamp(lo, hi)
    assert torch.allclose(window_to_hu(x, (lo, hi)).double(), expected, atol=tol_hu, rtol=0)
    # the other way round: any x in [-1, 1] survives HU and back
    x0 = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    again = hu_to_window(window_to_hu(x0, (lo, hi)), (lo, hi))
    assert torch.allclose(again.double(), x0.double(), atol=tol_hu * 2 / width + 4 * eps, rtol=0)


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(-1.5, 1.5, width=32),
    st.floats(-1100, 3100, width=32),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), elements=finite_or_not))
def test_check_hu_accepts_or_raises_input_error(data):
    try:
        check_hu(data, "volume")
    except InputError as e:
        assert str(e).startswith("volume: ")
        return
    # accepted: then it really looks like HU
    lo, hi = float(data.min()), float(data.max())
    assert np.all(np.isfinite(data))
    assert not (lo >= -1.0001 and hi <= 1.0001)
    assert lo >= -4000 and hi <= 40000
    assert np.percentile(data, 1) < 0


def test_check_hu_accepts_a_phantom():
    check_hu(chest_phantom(0, 16).numpy(), "phantom")


# ------------------------------------------------------------------------------------------------------- geometry


def _lps_ct():
    """A (10, 12, 6) soft-tissue block at 4 x 3 x 8 mm on LPS axes (as read from DICOM), with a bright marker."""
    shape, sp = (10, 12, 6), (4.0, 3.0, 8.0)
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2 * sp[0], (shape[1] - 1) / 2 * sp[1], -(shape[2] - 1) / 2 * sp[2]]
    vol = np.full(shape, 40.0, np.float32)
    vol[1:3, 2:4, 1:3] = 1000.0
    marker = affine @ np.array([1.5, 2.5, 1.5, 1.0])  # physical centre of the marker (mm, RAS)
    return MetaTensor(torch.from_numpy(vol)[None], affine=torch.as_tensor(affine)), marker[:3]


def test_preprocess_ct_canonical_grid_and_air_padding():
    ct, marker = _lps_ct()
    assert nib.aff2axcodes(np.asarray(ct.affine)) == ("L", "P", "S")
    out = preprocess_ct(ct, size=16, cube_mm=64.0, iso_spacing=2.0)
    assert out.shape == (1, 16, 16, 16)
    affine = np.asarray(out.affine)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(affine[:3, :3], np.diag([4.0, 4.0, 4.0]), atol=1e-5)
    v = out[0].numpy()
    # the CT (40 x 36 x 48 mm) is smaller than the 64 mm cube: the rest is air, not water (0)
    assert v.min() == -1024.0
    assert np.all(v[0] == -1024.0) and np.all(v[:, :, -1] == -1024.0)
    assert np.isclose(np.median(v[6:10, 6:10, 6:10]), 40.0, atol=1.0)
    assert np.count_nonzero(np.abs(v) < 1) == 0  # no zero fill anywhere
    # the marker stays at the same physical place (within one output voxel)
    w = np.clip(v - 40.0, 0, None)
    idx = np.indices(v.shape).reshape(3, -1)
    centroid = (idx * w.reshape(-1)).sum(1) / w.sum()
    assert np.linalg.norm((affine @ np.r_[centroid, 1.0])[:3] - marker) < 4.0


def test_preprocess_ct_crops_a_larger_ct():
    """A 100 mm block into a 40 mm cube: cropped, no air left, spacing cube_mm / size."""
    vol = np.full((50, 50, 25), 100.0, np.float32)
    ct = MetaTensor(torch.from_numpy(vol)[None], affine=torch.as_tensor(np.diag([2.0, 2.0, 4.0, 1.0])))
    out = preprocess_ct(ct, size=8, cube_mm=40.0, iso_spacing=2.0)
    assert out.shape == (1, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(out.affine)[:3, :3], np.diag([5.0] * 3), atol=1e-5)
    assert torch.allclose(out, torch.tensor(100.0), atol=0.5)


def test_preprocess_ct_is_a_no_op_on_a_phantom_on_the_grid():
    hu = chest_phantom(3, 16)
    ct = MetaTensor(hu[None], affine=torch.as_tensor(phantom_affine(16)))
    out = preprocess_ct(ct, size=16, cube_mm=320.0)
    assert out.shape == (1, 16, 16, 16)
    assert torch.equal(torch.as_tensor(out), hu[None])
    np.testing.assert_allclose(np.asarray(out.affine), phantom_affine(16))
    # a different target size does resample
    assert preprocess_ct(ct, size=8, cube_mm=320.0, iso_spacing=20.0).shape == (1, 8, 8, 8)


def test_preprocess_ct_rejects_a_tiny_size():
    ct, _ = _lps_ct()
    with pytest.raises(ValueError, match="at least 2"):
        preprocess_ct(ct, size=1)
