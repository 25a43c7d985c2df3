"""Coarse inputs of the refiners: degraded ground truth, and the frozen cascade stage from a checkpoint."""

import pytest
import torch

from custom.data.coarse import CascadeCoarsed, DegradeCTd
from custom.errors import InputError
from custom.networks import CascadeDenoiser


def _ct(size=16):
    c = torch.linspace(-1, 1, size)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    return ((zz**2 + yy**2 + xx**2) < 0.5).float()[None] * 1.6 - 0.8  # a sphere in window units


def test_degrade_downsamples_blurs_and_adds_seeded_noise():
    ct = _ct()
    t = DegradeCTd("label", "image", downsample=4, blur_sigma=1.0, noise_std=0.02)
    t.set_random_state(3)
    a = t({"label": ct})["image"]
    assert a.shape == (1, 4, 4, 4) and a.min() >= -1 and a.max() <= 1
    t.set_random_state(3)
    assert torch.equal(t({"label": ct})["image"], a)  # seeded
    b = t({"label": ct})["image"]
    assert not torch.equal(a, b)  # random across calls in training mode
    same = DegradeCTd("label", "image", downsample=2, output_size=16, deterministic=True)
    x, y = same({"label": ct})["image"], same({"label": ct})["image"]
    assert x.shape == ct.shape and torch.equal(x, y)
    assert (x - ct).abs().mean() > 0.01  # it does degrade
    clean = DegradeCTd("label", "image", downsample=1, blur_sigma=0.0, noise_std=0.0)({"label": ct})["image"]
    assert torch.equal(clean, ct)


def test_degrade_rejects_bad_inputs():
    with pytest.raises(InputError, match="ground-truth"):
        DegradeCTd("label")({"image": _ct()})
    with pytest.raises(ValueError, match="divisible"):
        DegradeCTd("label", downsample=3)({"label": _ct()})
    with pytest.raises(ValueError, match="blur_sigma"):
        DegradeCTd("label", blur_sigma=(2.0, 1.0))


def test_cascade_coarse_from_a_written_checkpoint(tmp_path):
    args = dict(
        volume_size=8,
        token_grid=2,
        channels=(8, 8, 8),
        xray_channels=8,
        lift_channels=8,
        hidden_size=24,
        vit_depth=1,
        num_heads=2,
        geometry="parallel",
    )
    torch.manual_seed(0)
    net = CascadeDenoiser(**args)
    torch.nn.init.normal_(net.out[-1].weight, std=0.05)  # the zero output layer would make every sample noise
    ckpt = tmp_path / "cascade.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    t = CascadeCoarsed("xray", str(ckpt), args, output_size=16, num_inference_steps=2)
    xray = torch.rand(2, 8, 8)
    out = t({"xray": xray})["image"]
    assert out.shape == (1, 16, 16, 16) and torch.isfinite(out).all() and out.abs().max() <= 1
    assert torch.equal(t({"xray": xray})["image"], out)  # seeded: a cache computes it once
    assert not torch.equal(t({"xray": torch.rand(2, 8, 8)})["image"], out)
    with pytest.raises(FileNotFoundError, match="cascade checkpoint"):
        CascadeCoarsed("xray", str(tmp_path / "none.pt"), args)
