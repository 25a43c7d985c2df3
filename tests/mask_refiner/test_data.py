"""Mask-refiner data: the stand-in generator, the dataset setup, auxiliary channels and the batch sampler."""

import json
from collections import Counter

import numpy as np
import pytest

from custom.core.errors import InputError
from custom.mask_refiner.data import (
    CHANNELS,
    dice,
    entropy_map,
    generate_source,
    load_case,
    refiner_datalist,
    setup_dataset,
    signed_distance,
)
from custom.mask_refiner.samplers import HardExampleBatchSampler


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refiner")
    src = generate_source(tmp / "src", n_patients=20, n_controls=5, width=48, seed=3, heights=(60, 120))
    return src, tmp / "data", setup_dataset(src, tmp / "data")


def test_generator_writes_the_postprocess_layout_with_spread_of_coarse_dice(dataset):
    src, _, _ = dataset
    scores = json.loads((src / "patient_dice_scores.json").read_text())
    splits = json.loads((src / "comprehensive_splits.json").read_text())
    assert len(scores) == 25 and set(splits) == {"train", "val", "test"}
    patients = [v for k, v in scores.items() if k.startswith("patient")]
    assert min(patients) < 0.6 and max(patients) > 0.85  # from poor to good coarse masks
    probs = np.load(src / "patient_000_probabilities.npy")
    assert probs.shape[0] == 2 and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert 60 <= probs.shape[1] <= 120 and probs.shape[2] == 48


def test_setup_writes_every_channel_and_hardness(dataset):
    src, data, splits = dataset
    train = [p for p in splits["train"] if not p.startswith("control")]
    hard = [p for p in train if splits["hardness"][p] == "hard"]
    assert len(hard) == max(1, round(0.2 * len(train)))
    assert max(splits["coarse_dice"][p] for p in hard) <= min(
        splits["coarse_dice"][p] for p in train if p not in hard
    )  # the bottom 20% by coarse Dice
    assert all(splits["hardness"][p] == "control" for p in splits["hardness"] if p.startswith("control"))
    x, mask = load_case(data / train[0])
    assert x.shape == (len(CHANNELS),) + mask.shape
    assert x[4].min() >= -1 and x[4].max() <= 1  # distance scaled to [-1, 1]
    assert np.allclose(x[5][:, 0], np.linspace(0, 1, mask.shape[0]), atol=1e-6)  # y coordinate
    controls = [p for p in splits["hardness"] if p.startswith("control")]
    assert load_case(data / controls[0])[1].sum() == 0  # controls have empty masks
    assert len(refiner_datalist(data, "train")) == len(splits["train"])


def test_setup_is_resumable_and_rejects_bad_input(dataset, tmp_path):
    src, data, _ = dataset
    before = (data / "patient_000" / "entropy.npy").stat().st_mtime_ns
    setup_dataset(src, data)
    assert (data / "patient_000" / "entropy.npy").stat().st_mtime_ns == before  # finished cases are skipped
    with pytest.raises(InputError, match="comprehensive_splits.json"):
        setup_dataset(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="refiner-setup"):
        refiner_datalist(tmp_path, "train")


def test_signed_distance_handles_empty_and_full_masks():
    assert np.all(signed_distance(np.zeros((20, 30), bool)) == 1)
    assert np.all(signed_distance(np.ones((20, 30), bool)) == -1)
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    d = signed_distance(m, clip=10)
    assert d[20, 20] == -1 and d[0, 0] == 1 and -0.2 < d[10, 20] < 0.2
    assert entropy_map(np.array([0.5]))[0] == pytest.approx(1.0) and entropy_map(np.array([0.0]))[0] < 1e-4
    assert dice(np.zeros(3), np.zeros(3)) == 1.0 and dice(np.ones(3), np.zeros(3)) == 0.0


def test_batch_sampler_composition_and_reproducibility():
    hardness = ["hard"] * 6 + ["control"] * 3 + ["random"] * 30
    sampler = HardExampleBatchSampler(hardness, {"hard": 5, "control": 1, "random": 2}, num_batches=20, seed=1)
    batches = list(sampler)
    assert len(batches) == 20 and all(len(b) == 8 for b in batches)
    for b in batches:
        counts = Counter(hardness[i] for i in b[:5] + b[5:6])
        assert counts["hard"] == 5 and hardness[b[5]] == "control"
    again = HardExampleBatchSampler(hardness, {"hard": 5, "control": 1, "random": 2}, num_batches=20, seed=1)
    assert list(again) == batches  # same seed, same first epoch
    assert list(sampler) != batches  # the next epoch is a new draw
    with pytest.raises(ValueError, match="has none"):
        HardExampleBatchSampler(["random"] * 10, {"hard": 5, "control": 1, "random": 2})


def test_setup_reads_nifti_images_and_masks(tmp_path):
    """A postprocess folder whose image and mask are NIfTI (a PET/MR slice) sets up like a PNG one."""
    import nibabel as nib

    src = generate_source(tmp_path / "src", n_patients=5, n_controls=1, width=32, seed=4, heights=(40, 50))
    pid = "patient_000"
    from PIL import Image

    for sub in ("images", "labels"):
        arr = np.asarray(Image.open(src / sub / f"{pid}.png")).astype(np.float32)
        nib.save(nib.Nifti1Image(arr.T, np.eye(4)), str(src / sub / f"{pid}.nii.gz"))  # NIfTI stores (cols, rows)
        (src / sub / f"{pid}.png").unlink()
    setup_dataset(src, tmp_path / "data")
    x, mask = load_case(tmp_path / "data" / pid)
    assert x.shape[1:] == mask.shape and mask.shape == np.load(src / f"{pid}_probabilities.npy").shape[1:]
