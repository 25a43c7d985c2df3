"""The refiner's abstention safeguard (min_change): the change measure, abstaining per image, the choice on
validation rows, and the config key reaching the network that monai.bundle run and the MONAI Label app build."""

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from custom.core.bundle import build_network, make_parser, read_bundle_config
from custom.core.errors import InputError
from custom.mask_refiner.checks import check_inference_request
from custom.mask_refiner.data import make_channels
from custom.mask_refiner.network import RefinerUNet
from custom.mask_refiner.safeguard import (
    abstain_small_changes,
    choose_min_change,
    guarded_dice,
    mask_change,
    min_change_record,
    recorded_min_change,
)

BUNDLE = ROOT / "bundles" / "mask_refiner_2d"


def _disk(size=32, radius=8.0, width=2.0):
    """A soft disk (H, W) probability map; the centre is off the pixel grid, so no pixel sits at exactly 0.5."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.sqrt((yy - 15.3) ** 2 + (xx - 15.6) ** 2)
    return (1 / (1 + np.exp(-(radius - r) / width))).astype(np.float32)


def _net(bias: float, min_change: float) -> RefinerUNet:
    """A tiny refiner whose correction is ``bias`` everywhere: the zero-initialised head with its bias set, so the
    refined mask is the coarse disk grown by a ring whose width grows with ``bias``."""
    torch.manual_seed(0)
    net = RefinerUNet(channels=(4, 4, 4, 4), min_change=min_change)
    with torch.no_grad():
        net.head.bias.fill_(bias)
    return net.eval()


def _inputs(prob):
    image = np.linspace(0, 1, prob.size, dtype=np.float32).reshape(prob.shape)
    return torch.from_numpy(make_channels(prob, image))[None]


def test_mask_change_is_one_minus_dice_of_the_two_masks():
    coarse = torch.zeros(4, 1, 4, 4)
    refined = torch.full((4, 1, 4, 4), -5.0)
    coarse[0, 0, :2] = 1  # 8 px, refined the same 8 px: no change
    refined[0, 0, :2] = 5
    coarse[1, 0, :2] = 1  # 8 px, refined 4 of them: Dice 8/12
    refined[1, 0, :1] = 5
    coarse[2, 0, :2] = 1  # disjoint
    refined[2, 0, 2:] = 5
    # image 3: both empty, nothing to change
    change = mask_change(coarse, refined)
    assert change.shape == (4,) and change.dtype == torch.float64
    assert change.tolist() == pytest.approx([0.0, 1 - 8 / 12, 1.0, 0.0])


def test_abstains_per_image_below_min_change_and_passes_larger_changes_through():
    prob = torch.from_numpy(_disk())[None, None]
    coarse_logits = torch.logit(prob.clamp(1e-4, 1 - 1e-4))
    small, large = coarse_logits + 0.5, coarse_logits + 5.0  # a thin ring added, a wide ring added
    change = mask_change(prob.expand(2, -1, -1, -1), torch.cat([small, large]))
    assert 0 < change[0] < 0.3 < change[1]
    out = abstain_small_changes(
        torch.cat([small, large]), coarse_logits.expand(2, -1, -1, -1), prob.expand(2, -1, -1, -1), 0.3
    )
    assert torch.equal(out[0], coarse_logits[0]) and torch.equal(out[1], large[0])
    kept = abstain_small_changes(small, coarse_logits, prob, 0.0)  # 0 turns it off
    assert torch.equal(kept, small)


def test_network_abstains_in_eval_mode_only():
    x = _inputs(_disk())
    coarse = torch.logit(x[:, 1:2].clamp(1e-4, 1 - 1e-4))
    with torch.no_grad():
        guarded = _net(0.5, 0.3)(x)
        assert torch.equal(guarded, coarse)  # a thin ring: the refiner gives the coarse map back
        assert not torch.equal(_net(0.5, 0.0)(x), coarse)  # without the safeguard it refines
        assert not torch.equal(_net(5.0, 0.3)(x), coarse)  # a large change passes
    training = _net(0.5, 0.3).train()
    assert not torch.equal(training(x), coarse)  # training sees the correction (and its gradient)
    with pytest.raises(ValueError, match="min_change"):
        RefinerUNet(channels=(4, 4, 4, 4), min_change=1.5)


def test_traced_network_keeps_the_per_image_choice():
    """TorchScript export traces the network: the choice must stay a tensor operation, not a frozen branch."""
    x = torch.cat([_inputs(_disk()), _inputs(_disk(radius=4.0, width=4.0))])
    net = _net(0.5, 0.15)
    with torch.no_grad():
        eager = net(x)
        coarse = torch.logit(x[:, 1:2].clamp(1e-4, 1 - 1e-4))
        abstained = [torch.equal(eager[i], coarse[i]) for i in range(2)]
        assert abstained == [True, False]  # a thin ring on a large disk, a relatively wide one on a small disk
        traced = torch.jit.trace(net, x[:1])  # traced on an image it abstains on
        assert torch.equal(traced(x), eager) and torch.equal(traced(x.flip(0)), eager.flip(0))


def test_choice_takes_the_best_validation_dice_and_the_largest_value_among_equals():
    rows = [
        {"coarse_dice": 0.90, "refined_dice": 0.88, "mask_change": 0.05},  # a nudge that harms
        {"coarse_dice": 0.40, "refined_dice": 0.60, "mask_change": 0.30},  # a correction that helps
        {"coarse_dice": 1.00, "refined_dice": 1.00, "mask_change": 0.0},  # a control left empty
    ]
    choice = choose_min_change(rows)
    # every value in (0.05, 0.30] keeps the correction and drops the nudge; the largest of them is taken
    assert choice["min_change"] == 0.30
    assert choice["guarded_dice"] == pytest.approx((0.90 + 0.60 + 1.00) / 3)
    assert choice["harm_rate"] == pytest.approx(1 / 3) and choice["guarded_harm_rate"] == 0.0
    assert choice["abstained"] == 1
    assert guarded_dice(rows, 0.31).tolist() == [0.90, 0.40, 1.00]
    helpful = [{"coarse_dice": 0.5, "refined_dice": 0.7, "mask_change": 0.02}]
    assert choose_min_change(helpful)["min_change"] == 0.02  # never abstains on what helps on validation
    with pytest.raises(ValueError):
        choose_min_change([])


def test_one_validation_image_is_enough_to_choose():
    """The MONAI Label app's train task may hold out a single image: the rule stays the same."""
    harmed = choose_min_change([{"coarse_dice": "0.9", "refined_dice": "0.8", "mask_change": "0.07"}])  # CSV strings
    assert harmed["min_change"] == 1.0 and harmed["images"] == 1  # abstaining is best; the largest value among equals
    assert harmed["harm_rate"] == 1.0 and harmed["guarded_harm_rate"] == 0.0 and harmed["abstained"] == 1
    helped = choose_min_change([{"coarse_dice": 0.6, "refined_dice": 0.8, "mask_change": 0.07}])
    assert helped["min_change"] == 0.07 and helped["guarded_dice"] == pytest.approx(0.8) and helped["abstained"] == 0
    unchanged = choose_min_change([{"coarse_dice": 1.0, "refined_dice": 1.0, "mask_change": 0.0}])  # an empty control
    assert unchanged["min_change"] == 1.0 and unchanged["abstained"] == 0


def test_a_recorded_min_change_applies_only_to_the_weights_it_was_chosen_for():
    choice = choose_min_change([{"coarse_dice": 0.6, "refined_dice": 0.8, "mask_change": 0.07}])
    sha = "ab" * 32
    record = min_change_record(choice, sha.upper(), ["slice1"])
    assert record["min_change"] == 0.07 and record["weights_sha256"] == sha
    assert record["validation_images"] == 1 and record["validation_ids"] == ["slice1"]
    assert record["selection"] == choice
    assert recorded_min_change(record, sha) == (0.07, "")
    assert recorded_min_change(record, sha.upper()) == (0.07, "")  # hex digits in either case
    value, why = recorded_min_change(record, "cd" * 32)
    assert value is None and "other weights" in why and "ababababab" in why
    for bad, words in (
        ([record], "not a JSON object"),
        ({**record, "weights_sha256": None}, "no weights_sha256"),
        ({k: v for k, v in record.items() if k != "weights_sha256"}, "no weights_sha256"),
        ({**record, "min_change": 1.5}, "min_change"),
        ({**record, "min_change": None}, "min_change"),
        ({**record, "min_change": True}, "min_change"),
    ):
        value, why = recorded_min_change(bad, sha)
        assert value is None and words in why
    with pytest.raises(ValueError, match="min_change"):
        min_change_record(dict(choice, min_change=-0.1), sha)


def test_config_key_reaches_the_network_the_bundle_and_the_app_build():
    """monai.bundle run instantiates ``network_def`` of inference.json, and so does the MONAI Label app
    (apps/monailabel/lib/bundles.py: build_network over the bundle's inference.json)."""
    config = read_bundle_config(BUNDLE, "inference.json")
    train = read_bundle_config(BUNDLE, "train.json")
    # training and its model selection stay unguarded: the value is chosen afterwards on that validation split
    assert 0 < config["min_change"] < 1 and train["min_change"] == 0
    net = build_network(make_parser(config, BUNDLE), BUNDLE / "models" / "model.pt")
    assert net.min_change == config["min_change"] and not net.training
    assert build_network(make_parser(config, BUNDLE, {"min_change": 0.0})).min_change == 0.0
    with pytest.raises(InputError, match="min_change"):
        check_inference_request(BUNDLE / "models" / "model.pt", BUNDLE / "eval", min_change=-0.1)


@pytest.mark.parametrize("min_change,expect_coarse", [(0.0, False), (0.3, True)])
def test_bundle_inference_writes_the_guarded_mask(tmp_path, min_change, expect_coarse):
    from monai.bundle import run

    prob = _disk()
    Image.fromarray((np.linspace(0, 1, prob.size).reshape(prob.shape) * 65535).astype(np.uint16)).save(
        tmp_path / "slice.png"
    )
    np.save(tmp_path / "slice_probabilities.npy", prob)
    torch.save(_net(0.5, 0.0).state_dict(), tmp_path / "model.pt")
    run(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        bundle_root=str(BUNDLE),
        ckpt_path=str(tmp_path / "model.pt"),
        image_path=str(tmp_path / "slice.png"),
        probabilities_path=str(tmp_path / "slice_probabilities.npy"),
        output_dir=str(tmp_path / "out"),
        channels=[4, 4, 4, 4],
        min_change=min_change,
        device="$torch.device('cpu')",
    )
    mask = np.asarray(Image.open(tmp_path / "out" / "slice_mask.png")) > 0
    assert np.array_equal(mask, prob > 0.5) == expect_coarse
    assert mask.sum() >= (prob > 0.5).sum() > 0
