"""Procedural chest phantoms, realistic style (``style="realistic"``): arms, shoulder girdle, table, breasts, body
size, contrast, partial coverage along the body axis and the circular scan field, each drawn per seed and
reproducible."""

from functools import partial

import numpy as np
import pytest
import torch

from custom.datasets.phantom import chest_phantom as _chest_phantom
from custom.datasets.phantom import phantom_traits

chest_phantom = partial(_chest_phantom, style="realistic")

# a view of the whole patient: a wide cube, every structure switched off unless a test turns it on
WIDE = dict(size=64, fov=480.0, noise_hu=0.0)
PLAIN = {"coverage": None, "scan_radius": 400.0, "table": False, "breasts": False, "contrast": 0.0}


def _mm(size, fov):
    return (np.arange(size) - (size - 1) / 2) * fov / size


def _slice_at(v, fov, z_mm):
    return v[:, :, int(np.argmin(np.abs(_mm(v.shape[2], fov) - z_mm)))]


def test_traits_are_per_seed_reproducible_and_varied():
    assert phantom_traits(3) == phantom_traits(3)
    traits = [phantom_traits(s) for s in range(80)]
    assert {t["arms"] for t in traits} >= {("down", "down"), ("up", "up")}
    assert any(a != b for a, b in (t["arms"] for t in traits))  # one arm up, one down, sometimes
    for key in ("table", "breasts"):
        assert 0.15 < np.mean([t[key] for t in traits]) < 0.95, key
    assert 0.15 < np.mean([t["contrast"] > 0 for t in traits]) < 0.7
    assert all(t["contrast"] == 0 or 150 <= t["contrast"] <= 350 for t in traits)
    assert 0.15 < np.mean([t["coverage"] is not None for t in traits]) < 0.7
    habitus = [t["habitus"] for t in traits]
    assert min(habitus) < 0.15 and max(habitus) > 0.7  # thin to obese


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_same_seed_same_volume_plausible_hu(seed):
    a = chest_phantom(seed, size=32)
    assert torch.equal(a, chest_phantom(seed, size=32))
    v = a.numpy()
    assert np.isfinite(v).all()
    assert v.min() >= -1024 and v.max() <= 3071
    assert np.count_nonzero(v > 300) > 20  # bone
    assert np.count_nonzero((v > -950) & (v < -700)) > 0.03 * v.size  # lungs


def test_noise_only_inside_the_body_and_the_table():
    noisy, quiet = chest_phantom(1, 32).numpy(), chest_phantom(1, 32, noise_hu=0.0).numpy()
    diff = noisy - quiet
    assert 10 < float(diff[quiet > -500].std()) < 14  # noise_hu = 12 by default
    # air far from the body: the anterior corners (the scanner table may reach the posterior ones)
    assert np.abs(diff[:2, -2:]).max() < 0.01 and np.abs(diff[-2:, -2:]).max() < 0.01


@pytest.mark.parametrize(
    "traits,message",
    [
        ({"arms": "down"}, "arms must be a pair"),
        ({"arms": ("Down", "down")}, "arms must be a pair"),
        ({"habitus": 1.5}, "habitus must be in"),
        ({"contrast": -100.0}, "contrast must be >= 0"),
        ({"coverage": (10.0,)}, "coverage must be None or two margins"),
    ],
)
def test_misread_trait_values_are_rejected(traits, message):
    with pytest.raises(ValueError, match=message):
        chest_phantom(seed=1, size=8, style="realistic", traits=traits)


def test_unknown_trait_is_rejected():
    with pytest.raises(ValueError, match="unknown phantom traits"):
        chest_phantom(0, 16, traits={"arm": "down"})


@pytest.mark.parametrize("seed", [0, 8])
def test_arms_down_put_the_humerus_outside_the_torso(seed):
    down = chest_phantom(seed, traits={**PLAIN, "arms": ("down", "down")}, **WIDE).numpy()
    up = chest_phantom(seed, traits={**PLAIN, "arms": ("up", "up")}, **WIDE).numpy()
    d, u = _slice_at(down, 480.0, -40.0), _slice_at(up, 480.0, -40.0)  # mid chest, below the shoulders
    arm_bone = (d > 200) & (u < -900)  # bone where the same patient with raised arms has air
    x = _mm(64, 480.0)
    for side in (1, -1):
        cols = arm_bone[x * side > 0]
        assert cols.sum() >= 5, side
    arm = (d > -200) & (u < -900)
    assert d[arm].max() > 300 and np.median(d[arm]) < 150  # bone inside soft tissue
    # raised arms add tissue and bone above the shoulders instead
    top = _mm(64, 480.0) > 140
    assert np.count_nonzero(up[:, :, top] > -500) > np.count_nonzero(down[:, :, top] > -500)


def test_scapulae_and_clavicles_add_bone_in_the_upper_chest():
    v = chest_phantom(4, traits=PLAIN, **WIDE).numpy()
    x, y = np.meshgrid(_mm(64, 480.0), _mm(64, 480.0), indexing="ij")
    upper = _slice_at(v, 480.0, 40.0)
    # posterior-lateral bone away from the spine: the scapular blades (and rib segments)
    assert np.count_nonzero((upper > 250) & (y < -30) & (np.abs(x) > 50)) >= 4


def test_table_below_the_back():
    kw = dict(size=48, fov=320.0, noise_hu=0.0)
    on = chest_phantom(5, traits={**PLAIN, "table": True, "pad": 0.0, "scan_radius": 250.0}, **kw).numpy()
    off = chest_phantom(5, traits={**PLAIN, "table": False, "scan_radius": 250.0}, **kw).numpy()
    y = _mm(48, 320.0)
    body_y = np.nonzero((off > -500).any(axis=(0, 2)))[0]
    below = y < y[body_y.min()] - 15  # two voxels past the soft edge of the skin
    table = on[:, below, :]
    assert np.count_nonzero((table > -400) & (table < 400)) > 0.02 * table.size
    assert off[:, below, :].max() < -950  # air (up to the soft edge of the skin) without the table


def test_breasts_add_anterior_fat_and_gland():
    kw = dict(size=48, fov=400.0, noise_hu=0.0)
    with_b = chest_phantom(9, traits={**PLAIN, "breasts": True}, **kw).numpy()
    without = chest_phantom(9, traits={**PLAIN, "breasts": False}, **kw).numpy()
    added = (with_b > -300) & (without < -900)
    assert added.sum() > 50
    assert -150 < np.median(with_b[added]) < 45
    ys = _mm(48, 400.0)[np.nonzero(added)[1]]
    assert np.median(ys) > 50  # in front


def test_body_size_range():
    kw = dict(size=48, fov=480.0, noise_hu=0.0)
    thin = chest_phantom(6, traits={**PLAIN, "habitus": 0.0}, **kw).numpy()
    obese = chest_phantom(6, traits={**PLAIN, "habitus": 1.0}, **kw).numpy()
    mid_t, mid_o = thin[:, :, 24], obese[:, :, 24]
    assert np.count_nonzero(mid_o > -500) > 1.3 * np.count_nonzero(mid_t > -500)
    fat_t = np.count_nonzero((mid_t > -150) & (mid_t < -60))
    fat_o = np.count_nonzero((mid_o > -150) & (mid_o < -60))
    assert fat_o > 2 * fat_t


def test_contrast_fills_the_aorta_and_heart():
    kw = dict(size=48, fov=320.0, noise_hu=0.0)
    plain = chest_phantom(11, traits={**PLAIN, "contrast": 0.0}, **kw).numpy()
    enh = chest_phantom(11, traits={**PLAIN, "contrast": 300.0}, **kw).numpy()
    lit = (enh > 150) & (enh < 350) & (plain < 100) & (plain > 0)
    assert lit.sum() > 100
    assert (plain[(plain > 0) & (plain < 100)]).size > 0


def test_partial_coverage_leaves_air_above_and_below():
    v = chest_phantom(12, 48, traits={"coverage": (10.0, 10.0)}).numpy()
    z_body = np.nonzero((v > -500).any(axis=(0, 1)))[0]
    assert z_body.min() > 0 and z_body.max() < 47
    assert z_body.min() > 3 and z_body.max() < 44
    assert v[:, :, : z_body.min() - 2].max() < -995  # a voxel or two of soft edge, then air
    assert v[:, :, z_body.max() + 3 :].max() < -995
    assert np.count_nonzero(v[:, :, 24] > -500) > 48 * 48 / 4
    whole = chest_phantom(12, 48, traits={"coverage": None}).numpy()
    assert np.count_nonzero((whole > -500).any(axis=(0, 1))) == 48


def test_outside_the_scan_field_is_air():
    radius = 130.0
    v = chest_phantom(13, 48, traits={"scan_radius": radius, "table": True}).numpy()
    x, y = np.meshgrid(_mm(48, 320.0), _mm(48, 320.0), indexing="ij")
    outside = np.sqrt(x**2 + y**2) > radius + 3 * 320.0 / 48  # past the soft edge
    assert v[outside].max() < -990
    assert np.count_nonzero(v[~outside] > -500) > 0.3 * np.count_nonzero(~outside) * 48
