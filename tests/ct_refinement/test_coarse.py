"""Coarse inputs of the refiners: degraded ground truth, and the frozen cascade stage from a checkpoint."""

import pytest
import torch

from custom.core.errors import InputError
from custom.ct_refinement.coarse import CascadeCoarsed, DegradeCTd
from custom.xray2ct.network import CascadeDenoiser


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


def test_load_coarse_takes_a_cascade_output_as_it_is_and_resamples_any_other_ct(tmp_path):
    from custom.core.io import save_nifti
    from custom.core.transforms import cube_affine, window_to_hu
    from custom.ct_refinement.coarse import LoadCoarseCTd

    truth = _ct(16)
    hu = window_to_hu(truth)[0].numpy()
    (tmp_path / "case7").mkdir()
    save_nifti(hu, cube_affine(16, 320.0), tmp_path / "case7" / "ct.nii.gz")  # how the cascade writes its output
    t = LoadCoarseCTd("coarse", "image", size=16, cube_mm=320.0, coarse_dir=str(tmp_path))
    out = t({"case_id": "case7"})
    assert out["image"].shape == (1, 16, 16, 16) and torch.allclose(out["image"], truth, atol=1e-5)
    by_path = t({"coarse": str(tmp_path / "case7" / "ct.nii.gz")})
    assert by_path["case_id"] == "case7" and torch.equal(by_path["image"], out["image"])  # named after its folder

    # the same sphere as a clinical-looking CT: anisotropic voxels (8 x 8 x 16 mm), not a cube, and off-centre
    import nibabel as nib
    import numpy as np

    x, y, z = np.meshgrid(np.arange(44) * 8.0, np.arange(40) * 8.0, np.arange(20) * 16.0, indexing="ij")
    cx, cy, cz = 43 * 4.0, 39 * 4.0, 19 * 8.0  # the volume's centre, mm
    sphere = np.where((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < 0.5 * 160**2, 160.0, -160.0)
    affine = np.diag([8.0, 8.0, 16.0, 1.0])
    affine[:3, 3] = [70.0 - cx, -40.0 - cy, 25.0 - cz]  # volume centre at (70, -40, 25) mm
    nib.save(nib.Nifti1Image(sphere.astype(np.float32), affine), tmp_path / "patient_3.nii.gz")
    other = t({"coarse": str(tmp_path / "patient_3.nii.gz")})
    assert other["case_id"] == "patient_3" and other["image"].shape == (1, 16, 16, 16)
    assert (other["image"] - truth).abs().mean() < 0.15  # the same sphere, now on the refiner's grid
    out_affine = other["coarse_affine"].numpy()
    np.testing.assert_allclose(np.diag(out_affine)[:3], [20.0] * 3, rtol=1e-5)
    np.testing.assert_allclose((out_affine @ np.append([7.5] * 3, 1))[:3], [70.0, -40.0, 25.0], atol=1.0)


def test_load_coarse_says_where_the_missing_coarse_ct_should_be(tmp_path):
    from custom.ct_refinement.coarse import LoadCoarseCTd, check_refiner_inputs

    with pytest.raises(InputError, match="the detail refiner refines with the two X-rays"):
        check_refiner_inputs("detail", "coarse.nii.gz")
    with pytest.raises(InputError, match="both"):
        check_refiner_inputs("a", "coarse.nii.gz", frontal_path="f.nii.gz")
    check_refiner_inputs("super_resolution", "coarse.nii.gz")
    check_refiner_inputs("b", "coarse.nii.gz", "f.nii.gz", "l.nii.gz")

    with pytest.raises(InputError, match="coarse_path"):
        LoadCoarseCTd(size=16)({"case_id": "a"})
    with pytest.raises(InputError, match=r"<coarse_dir>/a/ct.nii.gz.*inference.json"):
        LoadCoarseCTd(size=16, coarse_dir=str(tmp_path))({"case_id": "a"})
    with pytest.raises(InputError, match="no such file"):
        LoadCoarseCTd(size=16)({"coarse": str(tmp_path / "missing.nii.gz")})
