"""Real-slice data for the mask refiner, on tiny scans the tests write: slice choice, a weak segmenter that never
reads the mask, a patient split without leaks, and folders that refiner-setup and refiner-evaluate read."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_cli

from custom.mask_refiner.data import load_case, setup_dataset
from custom.mask_refiner.evaluation import evaluate_refiner
from custom.mask_refiner.network import RefinerUNet
from custom.mask_refiner.real_data import (
    bone_probability,
    build_real_slices,
    coarse_probability,
    find_volumes,
    lung_probability,
    patient_folds,
    pet_probability,
    pool_evaluations,
    read_rows,
    render_table,
    select_slices,
)
from custom.mask_refiner.safeguard import choose_min_change, guarded_dice

CT_SHAPE, PET_SHAPE = (8, 32, 32), (8, 16, 16)  # (Z, Y, X); PET voxels twice as wide, as in the real set
TUMOUR_SLICES = range(2, 6)


def _write(array, path, spacing, origin=(0.0, 0.0, 0.0), meta=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    for key, value in (meta or {}).items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path))


def _ball(shape, spacing, centre_mm, radius_mm, slices):
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    cz, cy, cx = centre_mm
    ball = ((y - cy) ** 2 + (x - cx) ** 2 <= radius_mm**2) & ((z - cz) ** 2 <= (3 * radius_mm) ** 2)
    keep = np.zeros(shape[0], bool)
    keep[list(slices)] = True
    return ball & keep[:, None, None]


def _write_sts(folder, seed):
    """One sarcoma patient: CT and MR (2 mm) with a faint tumour, PET (4 mm) with a hot tumour and a hot spot."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ct_spacing, pet_spacing = (2.0, 2.0, 3.0), (4.0, 4.0, 3.0)
    centre = (10.0, 30.0 + seed, 34.0)
    mask = _ball(CT_SHAPE, ct_spacing, centre, 12.0, TUMOUR_SLICES)
    ct = 40 + 10 * mask + rng.normal(0, 5, CT_SHAPE)
    _write(ct.astype(np.float32), folder / "CT_image.nii.gz", ct_spacing)
    _write(mask.astype(np.uint8), folder / "CT_mask.nii.gz", ct_spacing)
    _write(
        (300 - 60 * mask + rng.normal(0, 10, CT_SHAPE)).astype(np.float32), folder / "MR_T1_image.nii.gz", ct_spacing
    )
    _write(mask.astype(np.uint8), folder / "MR_T1_mask.nii.gz", ct_spacing)
    pet_mask = _ball(PET_SHAPE, pet_spacing, centre, 12.0, TUMOUR_SLICES)
    suv = 0.5 + 6.0 * pet_mask + rng.uniform(0, 0.2, PET_SHAPE)
    suv[0, 1, 1] = 30.0  # a hotter single voxel far from the tumour: the volume's SUVmax is not the lesion's
    _write(suv.astype(np.float32), folder / "PET_image.nii.gz", pet_spacing)
    _write(pet_mask.astype(np.uint8), folder / "PET_mask.nii.gz", pet_spacing)


def _chest(shape=(6, 40, 40)):
    """(HU, label map) of a tiny chest: body at 40 HU in air, two lungs at -850 HU, four ribs at 600 HU."""
    hu = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    body = ((yy - 20) / 17.0) ** 2 + ((xx - 20) / 18.0) ** 2 <= 1
    hu[:, body] = 40.0
    for value, cx in ((5, 12), (6, 28)):  # right and left lung
        lung = ((yy - 20) / 9.0) ** 2 + ((xx - cx) / 5.0) ** 2 <= 1
        hu[1:5, lung] = -850.0
        labels[1:5, lung] = value
    for cy, cx in ((5, 12), (5, 28), (34, 12), (34, 28)):
        rib = (yy - cy) ** 2 + (xx - cx) ** 2 <= 2
        hu[:5, rib] = 600.0
        labels[:5, rib] = 1
    return hu, labels


SEGMENTS = {
    "Segment0_Name": "ribs",
    "Segment0_LabelValue": "1",
    "Segment0_Layer": "0",
    "Segment1_Name": "right lung",
    "Segment1_LabelValue": "5",
    "Segment1_Layer": "0",
    "Segment2_Name": "left lung",
    "Segment2_LabelValue": "6",
    "Segment2_Layer": "0",
}


@pytest.fixture()
def sample(tmp_path):
    """A ``sample-data`` folder in miniature: three sarcoma patients and one chest CT with a Slicer segmentation."""
    root = tmp_path / "sample"
    for i in (1, 2, 3):
        _write_sts(root / "sts" / f"STS_00{i}", seed=i)
    chest = root / "chest_ct" / "slicer_chest"
    chest.mkdir(parents=True)
    hu, labels = _chest()
    _write(hu, chest / "CTChest4.nrrd", (3.0, 3.0, 10.0))
    _write(labels, chest / "Segmentation.seg.nrrd", (3.0, 3.0, 10.0), meta=SEGMENTS)
    return root


def _cases(out):
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_slices_show_the_structure_plus_controls(sample, tmp_path):
    out = tmp_path / "real"
    build_real_slices(sample, out)
    rows = _cases(out)
    kinds = {(r["patient"], r["modality"], r["structure"]) for r in rows}
    assert kinds == {(f"STS_00{i}", m, "tumour") for i in (1, 2, 3) for m in ("CT", "MR_T1", "PET")} | {
        ("slicer_chest", "CT", "lungs"),
        ("slicer_chest", "CT", "ribs"),
    }
    ct = [r for r in rows if r["patient"] == "STS_001" and r["modality"] == "CT"]
    assert sorted(int(r["slice"]) for r in ct if r["control"] == "False") == list(TUMOUR_SLICES)
    controls = [r for r in ct if r["control"] == "True"]
    assert len(controls) == 1 and int(controls[0]["slice"]) not in TUMOUR_SLICES  # 20% of 4 slices, at least one
    store = out / "slices"
    for r in rows:
        probs = np.load(store / f"{r['case']}_probabilities.npy")
        assert probs.shape == (2, int(r["height"]), int(r["width"])) and np.allclose(probs.sum(0), 1, atol=1e-6)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(store / "labels" / f"{r['case']}.png"))) > 0
        assert label.any() == (r["control"] == "False") and r["case"].startswith("control_") == (r["control"] == "True")
    # the segment names in the .seg.nrrd header pick the labels: lungs are values 5 and 6, ribs value 1
    lungs = [r for r in rows if r["structure"] == "lungs" and r["control"] == "False"]
    assert sorted(int(r["slice"]) for r in lungs) == [1, 2, 3, 4]
    assert int(lungs[0]["mask_pixels"]) == int((_chest()[1][1] >= 5).sum())
    shown, ctrl = select_slices(np.zeros((10, 2, 2), bool) | (np.arange(10) >= 5)[:, None, None], 0.4)
    assert shown == [5, 6, 7, 8, 9] and ctrl == [0, 4]


def test_weak_segmenter_never_reads_the_mask(sample, tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    build_real_slices(sample, out_a)
    # change every mask (a wider tumour on the same slices; the lungs relabelled as one value) and rebuild
    for path in sample.glob("sts/*/*_mask.nii.gz"):
        mask = sitk.ReadImage(str(path))
        grown = sitk.BinaryDilate(mask, [2, 2, 0])
        sitk.WriteImage(grown, str(path))
    seg = sample / "chest_ct" / "slicer_chest" / "Segmentation.seg.nrrd"
    labels = _chest()[1]
    labels[2, 4:7, 11:14] = 0  # one rib fewer on slice 2; the other ribs keep the slice in
    _write(labels, seg, (3.0, 3.0, 10.0), meta=SEGMENTS)
    build_real_slices(sample, out_b)
    rows_a, rows_b = _cases(out_a), _cases(out_b)
    assert [r["case"] for r in rows_a] == [r["case"] for r in rows_b]
    changed = 0
    for r in rows_a:
        pa = np.load(out_a / "slices" / f"{r['case']}_probabilities.npy")
        pb = np.load(out_b / "slices" / f"{r['case']}_probabilities.npy")
        assert np.array_equal(pa, pb), r["case"]
        la = (out_a / "slices" / "labels" / f"{r['case']}.png").read_bytes()
        changed += la != (out_b / "slices" / "labels" / f"{r['case']}.png").read_bytes()
    assert changed > 10  # the truth did change, the coarse maps did not
    # and with the mask file gone the segmenter still runs
    volume = next(v for v in find_volumes(sample) if v.modality == "CT" and v.structure == "tumour")
    (volume.mask).unlink()
    assert coarse_probability(volume).shape == CT_SHAPE


def test_pet_delineation_uses_the_lesion_not_the_volume_maximum():
    suv = np.full((5, 20, 20), 0.5, np.float32)
    suv[1:4, 5:12, 5:12] = 6.0
    suv[2, 8, 8] = 10.0  # the lesion's SUVmax: the cut is 4.0
    suv[2, 6, 6] = 3.0  # inside the lesion but below 40%: left out
    suv[0, 18, 18] = 40.0  # a single very hot voxel elsewhere (smaller than the lesion)
    prob = pet_probability(suv)
    coarse = prob > 0.5
    assert coarse[1:4, 5:12, 5:12].sum() == 3 * 49 - 1 and not coarse[2, 6, 6]
    assert not coarse[0, 18, 18] and not coarse[:, :4].any()  # the hot spot is not connected to the lesion
    assert 0.5 < prob[2, 8, 8] <= 1 and prob.min() >= 0
    assert not pet_probability(np.zeros((3, 4, 4), np.float32)).any()


def test_lung_and_bone_rules():
    hu, labels = _chest()
    lungs = lung_probability(hu[2], spacing=(3.0, 3.0)) > 0.5
    assert np.array_equal(lungs, labels[2] >= 5)  # outside air touches the border and is left out
    bone = bone_probability(hu[2]) > 0.5
    assert np.array_equal(bone, labels[2] == 1)
    assert not (lung_probability(hu[5], spacing=(3.0, 3.0)) > 0.5).any()


def test_patient_split_has_no_leak(sample, tmp_path):
    out = tmp_path / "real"
    result = build_real_slices(sample, out)
    patient_of = {r["case"]: r["patient"] for r in _cases(out)}
    folds = json.loads((out / "folds.json").read_text())
    assert folds == result["folds"] and sorted(folds) == ["STS_001", "STS_002", "STS_003", "slicer_chest"]
    for test, plan in folds.items():
        splits = json.loads((out / f"fold_{test}" / "comprehensive_splits.json").read_text())
        patients = {k: {patient_of[c] for c in splits[k]} for k in ("train", "val", "test")}
        assert patients["test"] == {test} and test not in patients["train"] | patients["val"]
        assert not patients["train"] & patients["val"]
        assert patients["val"] == set(plan["val"]) and "slicer_chest" not in patients["val"]  # only lungs/ribs
        every = splits["train"] + splits["val"] + splits["test"]
        assert sorted(every) == sorted(patient_of) and len(set(every)) == len(every)
    assert sorted(p for plan in folds.values() for p in plan["test"]) == sorted(folds)  # each held out once
    with pytest.raises(ValueError, match="at least 3 patients"):
        patient_folds(["a", "b"], {"a": "x", "b": "x"})


def test_fold_folders_feed_refiner_setup_and_evaluate(sample, tmp_path):
    out = tmp_path / "real"
    build_real_slices(sample, out)
    data = tmp_path / "data"
    splits = setup_dataset(out / "fold_STS_002", data)
    assert "hard" in splits["hardness"].values() and "control" in splits["hardness"].values()
    x, mask = load_case(data / splits["test"][0])
    assert x.shape[0] == 6 and x.shape[1:] == mask.shape
    torch.manual_seed(0)
    net = RefinerUNet(channels=(4, 4, 4, 4))  # untrained: its zero correction head returns the coarse mask
    summary = evaluate_refiner(net, data, "test", tmp_path / "eval")
    assert summary["images"] == len(splits["test"]) and summary["harm_rate"] == 0.0
    assert summary["refined_dice"] == pytest.approx(summary["coarse_dice"])
    pooled = pool_evaluations(out / "cases.csv", {"identity": [tmp_path / "eval" / "metrics.csv"]})
    overall = next(g for g in pooled["groups"] if g["kind"] == "all")
    assert overall["images"] == summary["images"] and overall["identity"]["harm_rate"] == 0.0
    assert overall["coarse_dice"] == pytest.approx(summary["coarse_dice"])
    assert "| STS_002 |" in render_table(pooled)


def test_cli_writes_the_folds_and_refuses_a_wrong_folder(sample, tmp_path, capsys):
    from custom.cli import main  # in-process: the command line as typed, without a second interpreter start

    assert main(["refiner-real", str(sample), str(tmp_path / "real"), "--control_fraction", "0.5"]) == 0
    assert "fold slicer_chest" in capsys.readouterr().out and (tmp_path / "real" / "fold_STS_001" / "images").is_dir()
    assert main(["refiner-real", str(tmp_path / "nothing_here"), str(tmp_path / "x")]) == 2
    assert "sample-data" in capsys.readouterr().err
    assert main(["refiner-real-crossval", str(tmp_path), str(tmp_path / "cv")]) == 2
    assert "refiner-real" in capsys.readouterr().err


def test_crossval_fine_tunes_evaluates_and_resumes(sample, tmp_path):
    real, cv = tmp_path / "real", tmp_path / "cv"
    build_real_slices(sample, real)
    args = ("refiner-real-crossval", real, cv, "--folds", "STS_002", "--max_epochs", 1, "--batches_per_epoch", 1)
    r = run_cli(*args, "--val_interval", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tensors loaded, 0 kept their initialisation" in r.stdout + r.stderr  # started from the shipped weights
    summary = json.loads((cv / "summary.json").read_text())
    overall = next(g for g in summary["groups"] if g["kind"] == "all")
    assert summary["models"] == ["shipped", "finetuned", "finetuned+guard"]
    assert summary["folds"]["STS_002"]["test"] == ["STS_002"]
    assert overall["images"] == sum(1 for row in _cases(real) if row["patient"] == "STS_002")
    assert 0 <= overall["finetuned"]["harm_rate"] <= 1 and "| all |" in (cv / "table.md").read_text()
    assert (cv / "STS_002" / "runs" / "finished.json").is_file()
    # the safeguard is chosen on the validation patient, and the guarded network's held-out masks are exactly those
    # the choice assumed: the coarse mask where the unguarded change is below min_change, the refined one elsewhere
    choice = summary["safeguard"]["folds"]["STS_002"]
    assert choice["val"] == summary["folds"]["STS_002"]["val"] and 0 <= choice["min_change"] <= 1
    val_rows = read_rows(cv / "STS_002" / "eval_finetuned_val" / "metrics.csv")
    patient_of = {row["case"]: row["patient"] for row in _cases(real)}
    assert {patient_of[r["case_id"]] for r in val_rows} == set(choice["val"])
    assert choose_min_change(val_rows) == {k: v for k, v in choice.items() if k not in ("val", "held_out_abstained")}
    plain = read_rows(cv / "STS_002" / "eval_finetuned" / "metrics.csv")
    guarded = read_rows(cv / "STS_002" / "eval_finetuned_guarded" / "metrics.csv")
    assert [r["case_id"] for r in plain] == [r["case_id"] for r in guarded]
    expected = guarded_dice(plain, choice["min_change"])
    assert np.allclose([float(r["refined_dice"]) for r in guarded], expected, rtol=0, atol=1e-12)
    assert "min_change" in (cv / "table.md").read_text()
    r = run_cli(*args, "--val_interval", 1, "--safeguard", "false")  # finished folds are evaluated, not retrained
    assert r.returncode == 0 and "tensors loaded" not in r.stdout + r.stderr
    summary = json.loads((cv / "summary.json").read_text())
    assert summary["models"] == ["shipped", "finetuned"] and "safeguard" not in summary
    r = run_cli(*args, "--val_interval", 1, "--learning_rate", 0.01)  # never a model of other settings
    assert r.returncode == 2 and "trained before with other settings" in r.stderr
