"""Training crops of the super-resolution refiner are aligned with their ground truth, and tiled (sliding-window)
inference of a 4x larger output agrees with whole-volume inference."""

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.utils import set_determinism

from custom.ct_refinement.crops import PairedRandCropd, paired_crop_slices
from custom.ct_refinement.super_resolution import SuperResolutionRefiner


def _pair(side=16, scale=4, seed=0):
    """A random ground truth and its exact area-average by ``scale``: any aligned crop pair keeps that relation."""
    fine = torch.rand(1, side * scale, side * scale, side * scale, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool3d(fine[None], scale)[0], fine


def test_crop_pairs_are_aligned_coarse_origin_o_with_fine_origin_4o():
    coarse, fine = _pair()
    t = PairedRandCropd(("image", "label"), scale=4, crop_size=4, num_samples=6)
    t.set_random_state(1)
    crops = t({"image": coarse, "label": fine, "case_id": "c"})
    assert len(crops) == 6 and len({tuple(c["crop_origin"].tolist()) for c in crops}) > 1
    for c in crops:
        o = c["crop_origin"].tolist()
        assert c["image"].shape == (1, 4, 4, 4) and c["label"].shape == (1, 16, 16, 16) and c["case_id"] == "c"
        assert torch.equal(c["image"], coarse[:, o[0] : o[0] + 4, o[1] : o[1] + 4, o[2] : o[2] + 4])
        assert torch.equal(
            c["label"], fine[:, 4 * o[0] : 4 * o[0] + 16, 4 * o[1] : 4 * o[1] + 16, 4 * o[2] : 4 * o[2] + 16]
        )
        # the coarse crop is exactly the fine crop averaged down: same place, same field of view
        assert torch.allclose(F.avg_pool3d(c["label"][None], 4)[0], c["image"], atol=1e-6)
        # and the multi-scale targets (the fine crop averaged by 2) lie on the global 128-of-256 grid
        half = F.avg_pool3d(fine[None], 2)[0][
            :, 2 * o[0] : 2 * o[0] + 8, 2 * o[1] : 2 * o[1] + 8, 2 * o[2] : 2 * o[2] + 8
        ]
        assert torch.allclose(F.avg_pool3d(c["label"][None], 2)[0], half, atol=1e-6)
    t.set_random_state(1)
    assert [c["crop_origin"].tolist() for c in t({"image": coarse, "label": fine})] == [
        c["crop_origin"].tolist() for c in crops
    ]  # seeded


def test_crop_size_zero_keeps_the_whole_volume_and_bad_pairs_are_refused():
    coarse, fine = _pair(side=4)
    (whole,) = PairedRandCropd(scale=4, crop_size=0)({"image": coarse, "label": fine})
    assert torch.equal(whole["image"], coarse) and torch.equal(whole["label"], fine)
    with pytest.raises(ValueError, match="not 4 times"):
        PairedRandCropd(scale=4, crop_size=2)({"image": coarse, "label": fine[:, :8, :8, :8]})
    assert paired_crop_slices((1, 2, 3), 4, 4) == (
        (slice(1, 5), slice(2, 6), slice(3, 7)),
        (slice(4, 20), slice(8, 24), slice(12, 28)),
    )


def test_flat_crops_are_redrawn():
    coarse, fine = _pair(side=8)
    fine[:] = -1.0
    fine[:, 8:24, 8:24, 8:24] = 1.0  # one structure in an empty (air) volume: most crops miss it
    coarse = F.avg_pool3d(fine[None], 4)[0]
    t = PairedRandCropd(scale=4, crop_size=2, num_samples=8, max_tries=50)
    t.set_random_state(0)
    hits = sum(float(c["label"].max() - c["label"].min()) > 0 for c in t({"image": coarse, "label": fine}))
    assert hits == 8


def _norm_free(net):
    """The refiner without its per-volume statistics (instance norm, channel attention's global pooling): every
    output voxel then depends on a bounded neighbourhood only, so tiles must agree with the whole volume."""
    for m in net.modules():
        for name, child in list(m.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d) or name == "se":
                setattr(m, name, torch.nn.Identity())
    return net


def test_monai_sliding_window_tiles_a_4x_larger_output_exactly_for_a_norm_free_network():
    """MONAI 1.6.1's sliding_window_inference supports outputs larger than the input ('zoom' outputs: the window
    slices and the blending weights are scaled by output/input size, monai/inferers/utils.py), so no tiler of our
    own is needed. With weights that ignore each tile's border (where the tile's zero padding differs from the
    whole volume's), a network with a bounded receptive field gives the whole-volume output (away from the volume's
    own border, where only tile borders reach)."""
    torch.manual_seed(0)
    net = _norm_free(SuperResolutionRefiner(1, 4, (4, 4, 4), (1, 1, 1))).eval()
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.1)
    # tiles of 20 at 0 and 6 whose inner parts (a 7-voxel margin: the receptive field radius of this network is
    # about 6.3 coarse voxels) tile the volume's inner part [7, 19) exactly
    x = torch.rand(1, 1, 26, 26, 26) * 2 - 1
    roi, margin = 20, 7
    weights = torch.full((roi,) * 3, 1e-6)
    weights[margin:-margin, margin:-margin, margin:-margin] = 1.0
    with torch.no_grad():
        whole = net(x)
        tiled = sliding_window_inference(x, (roi,) * 3, 8, net, overlap=0.7, roi_weight_map=weights)
    assert tiled.shape == whole.shape == (1, 1, 104, 104, 104)
    assert (whole - F.interpolate(x, scale_factor=4, mode="trilinear")).abs().max() > 1e-2  # not trivial
    inner = (slice(None), slice(None), *[slice(4 * margin, 4 * (26 - margin))] * 3)
    assert torch.allclose(tiled[inner], whole[inner], atol=1e-4)


def test_tiles_of_the_refiner_with_instance_norm_are_its_training_crops_and_differ_from_the_whole_volume():
    """The refiner normalises per input (instance norm, the channel attention's global pooling), so a tile sees other
    statistics than the whole volume. It is trained on crops of the tile size, and the bundle tiles at that size: a
    tile's output is exactly what the network gives for that crop. Against the whole volume the difference is of
    the order of the learned correction itself (measured here on a random refiner; on the GPU after a few
    iterations of training, 0.34 HU mean for a 0.55 HU mean correction, see the model card): whole-volume inference
    is not what this network was trained for."""
    set_determinism(0)
    net = SuperResolutionRefiner(1, 4, (8, 4, 4), (1, 1, 1)).eval()
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    with torch.no_grad():
        tiled = SlidingWindowInferer((8,) * 3, sw_batch_size=4, overlap=0.0, mode="constant")(x, net)
        assert tiled.shape == (1, 1, 64, 64, 64)
        for o in ((0, 0, 0), (8, 0, 8), (8, 8, 8)):
            cs, fs = paired_crop_slices(o, 8, 4)
            assert torch.allclose(tiled[(0, 0, *fs)], net(x[(slice(None), slice(None), *cs)])[0, 0], atol=1e-5)
        blended = SlidingWindowInferer((8,) * 3, sw_batch_size=4, overlap=0.25, mode="gaussian")(x, net)
        whole = net(x)
    base = F.interpolate(x, scale_factor=4, mode="trilinear")
    diff, correction = float((blended - whole).abs().mean()), float((whole - base).abs().mean())
    # misplaced tiles would differ by the image content (about 0.5 here), far above the correction (about 0.02)
    assert 0 < diff < 1.5 * correction and float((blended - base).abs().mean()) < 1.5 * correction, (diff, correction)
    set_determinism(None)
