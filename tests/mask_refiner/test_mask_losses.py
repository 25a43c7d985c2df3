"""Refiner loss and the padding test (images vary in height): 300-1000 px, correct shapes and unchanged loss scale."""

import numpy as np
import pytest
import torch
from monai.data.utils import pad_list_data_collate

from custom.mask_refiner.losses import RefinerLoss, refiner_label
from custom.mask_refiner.network import RefinerUNet


def _item(h, w=48, seed=0, empty=False):
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    if not empty:
        cy, cx = h // 2, w // 2
        yy, xx = np.mgrid[0:h, 0:w]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 4) ** 2
    prob = np.clip(mask * 0.8 + rng.uniform(0, 0.2, (h, w)), 0, 1).astype(np.float32)
    image = np.stack([1 - prob, prob] + [rng.uniform(0, 1, (h, w)).astype(np.float32) for _ in range(4)])
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(refiner_label(mask))}


def test_refiner_padding():
    """Images of 300 to 1000 rows in one padded batch: outputs keep each image's shape, losses keep their scale."""
    torch.manual_seed(0)
    net = RefinerUNet(channels=(8, 8, 8, 8), num_heads=2).eval()
    loss = RefinerLoss()
    heights = [300, 517, 1000]
    items = [_item(h, seed=i) for i, h in enumerate(heights)]
    batch = pad_list_data_collate([dict(i) for i in items])  # the collate pads the dicts it is given in place
    assert batch["image"].shape[-2] == 1000  # padded to the tallest
    with torch.no_grad():
        out = net(batch["image"])
        assert out.shape == (3, 1, 1000, 48)
        for h, item in zip(heights, items):
            single = net(item["image"][None])
            assert single.shape == (1, 1, h, 48)
        # the loss of one image alone and of the same image padded to 1000 rows are equal, term by term
        alone = loss(net(items[0]["image"][None]), items[0]["label"][None])
        parts_alone = dict(loss.last)
        padded = pad_list_data_collate([dict(items[0]), _item(1000, seed=9)])
        logits = net(padded["image"][:1])
        padded_loss = loss(logits, padded["label"][:1])
    assert padded["label"][0, 1].sum() == 300 * 48  # valid mask marks exactly the real pixels
    assert torch.isclose(alone, padded_loss, rtol=1e-4), (parts_alone, loss.last)
    for k in ("dice", "bce", "surface"):
        assert abs(parts_alone[k] - loss.last[k]) < 1e-4 * max(1.0, abs(parts_alone[k]))


def test_batch_dice_gives_gradient_on_empty_controls():
    """A control image (empty mask) predicted as foreground must be pushed down even in a batch with lesions."""
    items = [_item(64, seed=1), _item(64, seed=2, empty=True)]
    batch = pad_list_data_collate([dict(i) for i in items])
    logits = torch.zeros(2, 1, 64, 48, requires_grad=True)
    RefinerLoss({"bce": 0.0, "surface": 0.0})(logits, batch["label"]).backward()
    assert logits.grad[1].abs().sum() > 0
    assert logits.grad[1].mean() > 0  # gradient descent lowers the control's foreground logits


def test_surface_term_rewards_inside_and_penalises_outside():
    item = _item(64)
    label = item["label"][None]
    inside = torch.where(label[:, :1] > 0, 10.0, -10.0)
    outside = -inside
    loss = RefinerLoss({"dice": 0.0, "bce": 0.0, "surface": 1.0})
    assert loss(inside, label) < 0 < loss(outside, label)
    with pytest.raises(ValueError, match="mask, valid, phi"):
        loss(inside, label[:, :2])


def test_untrained_refiner_returns_the_coarse_mask():
    item = _item(96)
    net = RefinerUNet(channels=(8, 8, 8, 8), num_heads=2)
    with torch.no_grad():
        p = torch.sigmoid(net(item["image"][None]))[0, 0]
    assert torch.allclose(p, item["image"][1].clamp(1e-4, 1 - 1e-4), atol=1e-5)
