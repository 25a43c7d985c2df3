"""Real 2D slices for the mask refiner: real scans, their real masks, and coarse maps from a real weak segmenter.

Source (``python -m custom sample-data``): the IBSI soft-tissue sarcoma set (``sts/STS_00N/{CT,MR_T1,PET}_{image,
mask}.nii.gz``, one tumour outline per scan, CC BY 3.0) and 3D Slicer's chest CT with its segmentation
(``chest_ct/slicer_chest``, MIT; the lungs and the ribs are used).

For every patient, scan and structure the axial slices that show the structure are taken, plus a few control
slices without it. The coarse probability map of each slice comes from a classical segmenter that reads the image
only, never the mask, so its errors are those of a real method rather than a degradation of the truth:

* PET tumour: 40% of the lesion's SUVmax, the fixed-threshold delineation of clinical PET. The lesion is found
  without the mask: the largest 3D region above SUV 2.5 (the usual "metabolically active" cut-off). The volume's
  own SUVmax is not used because it can sit elsewhere (in STS_001 it does, 3x hotter than the tumour).
* CT and MR tumour: the same PET delineation carried onto the co-registered anatomical scan (PET-guided
  contouring). Sarcoma is close to muscle in CT density and in T1 signal, so a threshold on those images finds
  nothing; the PET map instead gives a blurred, blocky (4.7 to 5.5 mm PET voxels) and metabolically biased outline,
  which is what a refiner looking at the anatomical image should sharpen.
* Lungs on CT: air below -400 HU inside the body (air regions touching the image border are outside air), small
  regions dropped, one opening; the airways stay in, as they do in any threshold method.
* Ribs on CT: bone above 200 HU inside the body; the spine, sternum, shoulder blades and bright vessels stay in.

Each binary rule becomes a probability with a logistic of (value - threshold) / width, so that the map is soft where
the intensity is close to the cut and the coarse mask (probability > 0.5) equals the rule.

Patients are split whole, one held out per fold (leave one patient out): with four patients, every patient gets a
held-out figure from a model that saw none of its slices in training or in model selection.

Layout written by :func:`build_real_slices` (each ``fold_<patient>`` folder is a ``refiner-setup`` input)::

    OUT/slices/images/<case>.png, labels/<case>.png, <case>_probabilities.npy, patient_dice_scores.json
    OUT/fold_<patient>/  the same files (hard links) + comprehensive_splits.json for that held-out patient
    OUT/cases.csv        one row per slice: patient, modality, structure, slice, control, coarse Dice, size, spacing
    OUT/folds.json       {held-out patient: {"train": [patients], "val": [patients], "test": [patient]}}
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from custom.core.errors import InputError
from custom.core.io import atomic_path, save_json, save_png, save_table
from custom.mask_refiner.data import MASK_THRESHOLD, dice

STS_MODALITIES = ("CT", "MR_T1", "PET")
SUV_SEED = 2.5  # SUV above which tissue counts as metabolically active (seed of the lesion)
PET_FRACTION = 0.40  # share of the lesion's SUVmax that delineates it
PET_WIDTH = 0.10  # logistic width as a share of the lesion's SUVmax
LUNG_HU, LUNG_WIDTH = -400.0, 100.0
LUNG_MIN_AREA_MM2 = 250.0  # smaller air pockets are bowel gas or noise, not a lung section
BONE_HU, BONE_WIDTH = 200.0, 50.0
BODY_HU = -500.0
# Display windows (HU) for the 16-bit PNG: the refiner sees the image scaled to its maximum, so the window only
# decides which contrast survives (soft tissue for the tumour, lung and bone windows for those structures).
CT_WINDOWS = {"tumour": (-160.0, 240.0), "lungs": (-1400.0, 200.0), "ribs": (-500.0, 1300.0)}
SLICER_LABELS = {"lungs": ("right lung", "left lung"), "ribs": ("ribs",)}


@dataclass(frozen=True)
class RealVolume:
    """One scan and one structure of one patient.

    ``labels``: segment names to take from a Slicer ``.seg.nrrd`` (empty: every non-zero voxel of the mask).
    ``pet``: the same patient's PET, for a tumour on CT or MR (its delineation is carried over).
    """

    patient: str
    collection: str
    modality: str
    structure: str
    image: Path
    mask: Path
    labels: tuple = ()
    pet: Path | None = None


def find_volumes(sample_dir) -> list[RealVolume]:
    """The scans of a ``sample-data`` folder that have masks: STS tumours on CT, MR and PET; Slicer lungs and ribs."""
    root = Path(sample_dir)
    found = []
    for case in sorted((root / "sts").glob("STS_*")):
        pet = case / "PET_image.nii.gz"
        for modality in STS_MODALITIES:
            image, mask = case / f"{modality}_image.nii.gz", case / f"{modality}_mask.nii.gz"
            if not (image.is_file() and mask.is_file()):
                continue
            if modality != "PET" and not pet.is_file():
                continue  # the CT/MR segmenter reads the PET
            found.append(
                RealVolume(case.name, "sts", modality, "tumour", image, mask, pet=None if modality == "PET" else pet)
            )
    chest = root / "chest_ct" / "slicer_chest"
    if (chest / "CTChest4.nrrd").is_file() and (chest / "Segmentation.seg.nrrd").is_file():
        for structure, names in SLICER_LABELS.items():
            found.append(
                RealVolume(
                    "slicer_chest",
                    "slicer_chest",
                    "CT",
                    structure,
                    chest / "CTChest4.nrrd",
                    chest / "Segmentation.seg.nrrd",
                    labels=names,
                )
            )
    if not found:
        raise InputError(
            f"{root}: no real scans with masks (expected sts/STS_*/ and/or chest_ct/slicer_chest/); "
            "make them with `python -m custom sample-data`"
        )
    return found


# ------------------------------------------------------------------------------------------------ reading


def _read(path: Path, oriented: bool = True):
    """The image in LPS orientation, so that array[z] is an axial slice with the patient's front at the top.

    ``oriented=False``: as stored, with its header's key/value pairs (reorienting drops them).
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
        return sitk.DICOMOrient(image, "LPS") if oriented else image
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "no detail"
        raise InputError(f"{path}: not a readable image ({msg})") from None


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def segment_labels(seg_image) -> dict:
    """{segment name: (layer, label value)} from the header of a 3D Slicer ``.seg.nrrd``."""
    keys = set(seg_image.GetMetaDataKeys())
    out, i = {}, 0
    while f"Segment{i}_Name" in keys:
        layer = int(seg_image.GetMetaData(f"Segment{i}_Layer")) if f"Segment{i}_Layer" in keys else 0
        value = int(seg_image.GetMetaData(f"Segment{i}_LabelValue")) if f"Segment{i}_LabelValue" in keys else 1
        out[seg_image.GetMetaData(f"Segment{i}_Name").strip()] = (layer, value)
        i += 1
    return out


def read_mask(volume: RealVolume, reference) -> np.ndarray:
    """The structure's mask (Z, Y, X) bool on the grid of ``reference`` (the scan)."""
    import SimpleITK as sitk

    seg = _read(volume.mask, oriented=False)
    if volume.labels:
        segments = segment_labels(seg)
        missing = [n for n in volume.labels if n not in segments]
        if missing:
            raise InputError(f"{volume.mask}: no segment named {missing} (has {sorted(segments)})")
    seg = sitk.DICOMOrient(seg, "LPS")
    if (
        seg.GetSize() != reference.GetSize()
        or not np.allclose(seg.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        or not np.allclose(seg.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        or not np.allclose(seg.GetDirection(), reference.GetDirection(), atol=1e-6)
    ):
        seg = sitk.Resample(seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    arr = _array(seg)
    if not volume.labels:
        return arr.reshape(arr.shape[:3] + (-1,)).any(-1) if arr.ndim == 4 else arr > 0
    mask = np.zeros(arr.shape[:3], bool)
    for name in volume.labels:
        layer, value = segments[name]
        mask |= (arr[..., layer] if arr.ndim == 4 else arr) == value
    return mask


# ---------------------------------------------------------------------------------------- weak segmenters


def _logistic(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def pet_probability(suv: np.ndarray) -> np.ndarray:
    """Coarse tumour probability (Z, Y, X) of a PET volume in SUV: 40% of the lesion's SUVmax.

    The lesion is the largest 3D region above SUV 2.5 (or, when nothing is that active, the region of the hottest
    voxel); the delineation keeps the 40%-of-SUVmax regions that overlap it, dilated by one voxel so that the
    logistic edge is not cut off.
    """
    suv = np.asarray(suv, np.float32)
    active = suv > SUV_SEED
    if active.any():
        labels, n = ndimage.label(active)
        sizes = ndimage.sum(active, labels, range(1, n + 1))
        seed = labels == 1 + int(np.argmax(sizes))
    else:
        seed = np.zeros(suv.shape, bool)
        seed[np.unravel_index(int(np.argmax(suv)), suv.shape)] = True
    suv_max = float(suv[seed].max())
    if suv_max <= 0:
        return np.zeros(suv.shape, np.float32)
    above = suv > PET_FRACTION * suv_max
    labels, _ = ndimage.label(above)
    keep = np.isin(labels, np.unique(labels[seed & above])) & above
    region = ndimage.binary_dilation(keep, iterations=1)
    return _logistic((suv - PET_FRACTION * suv_max) / (PET_WIDTH * suv_max)) * region


def _inside_body(hu: np.ndarray) -> np.ndarray:
    """The body of an axial CT slice: the largest region denser than -500 HU, holes (lungs, airways) filled."""
    dense = hu > BODY_HU
    labels, n = ndimage.label(dense)
    if n == 0:
        return dense
    sizes = ndimage.sum(dense, labels, range(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def lung_probability(hu: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """Coarse lung probability of an axial CT slice (HU): air below -400 HU that does not reach the image border."""
    hu = np.asarray(hu, np.float32)
    air = hu < LUNG_HU
    labels, _ = ndimage.label(air)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inner = air & ~np.isin(labels, border)
    inner = ndimage.binary_opening(inner, iterations=1)
    labels, n = ndimage.label(inner)
    if n:
        areas = ndimage.sum(inner, labels, range(1, n + 1)) * float(spacing[0] * spacing[1])
        inner = np.isin(labels, 1 + np.nonzero(areas >= LUNG_MIN_AREA_MM2)[0])
    region = ndimage.binary_dilation(inner, iterations=1)
    return _logistic((LUNG_HU - hu) / LUNG_WIDTH) * region


def bone_probability(hu: np.ndarray) -> np.ndarray:
    """Coarse rib probability of an axial CT slice (HU): everything denser than 200 HU inside the body."""
    hu = np.asarray(hu, np.float32)
    return _logistic((hu - BONE_HU) / BONE_WIDTH) * _inside_body(hu)


def coarse_probability(volume: RealVolume, image=None) -> np.ndarray:
    """The weak segmenter's probability (Z, Y, X) for ``volume``; reads its image (and PET), never its mask."""
    import SimpleITK as sitk

    image = _read(volume.image) if image is None else image
    if volume.structure == "tumour" and volume.modality == "PET":
        return pet_probability(_array(image))
    if volume.structure == "tumour":
        pet = _read(volume.pet)
        prob = sitk.GetImageFromArray(pet_probability(_array(pet)))
        prob.CopyInformation(pet)
        # linear interpolation in physical space; outside the PET field of view nothing was found
        on_grid = sitk.Resample(prob, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return np.clip(_array(on_grid), 0, 1).astype(np.float32)
    hu = _array(image).astype(np.float32)
    spacing = image.GetSpacing()[1::-1]  # (row, column) mm
    if volume.structure == "lungs":
        return np.stack([lung_probability(s, spacing) for s in hu])
    if volume.structure == "ribs":
        return np.stack([bone_probability(s) for s in hu])
    raise InputError(f"no weak segmenter for {volume.structure} on {volume.modality}")


def display_range(volume: RealVolume, arr: np.ndarray) -> tuple[float, float]:
    """(low, high) of the 16-bit image: a CT window per structure; MR to its 99.5th percentile; PET to its max."""
    if volume.modality == "CT":
        return CT_WINDOWS[volume.structure]
    if volume.modality == "PET":
        return 0.0, max(float(arr.max()), 1e-6)
    positive = arr[arr > 0]
    return 0.0, max(float(np.percentile(positive, 99.5)) if positive.size else 1.0, 1e-6)


# ---------------------------------------------------------------------------------------------- slicing


def select_slices(mask: np.ndarray, control_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """(slices showing the structure, control slices without it) of a (Z, Y, X) mask.

    Controls: ``control_fraction`` of the structure's slice count (at least one when any slice lacks it), spread
    evenly over the slices without the structure.
    """
    present = mask.reshape(mask.shape[0], -1).any(1)
    shown = [int(z) for z in np.nonzero(present)[0]]
    absent = [int(z) for z in np.nonzero(~present)[0]]
    n = min(len(absent), max(1, int(round(control_fraction * len(shown))))) if absent else 0
    picks = np.unique(np.round(np.linspace(0, len(absent) - 1, n)).astype(int)) if n else []
    return shown, [absent[i] for i in picks]


def case_id(volume: RealVolume, z: int, control: bool) -> str:
    """``<patient>_<modality>_<structure>_z<slice>``; controls start with ``control_`` (refiner-setup's rule)."""
    name = f"{volume.patient}_{volume.modality}_{volume.structure}_z{z:03d}"
    return f"control_{name}" if control else name


def volume_slices(volume: RealVolume, control_fraction: float = 0.2):
    """Yield one dict per selected slice: case, z, control, image (uint16), mask (bool), prob (float32)."""
    image = _read(volume.image)
    arr = _array(image).astype(np.float32)
    if arr.ndim != 3:
        raise InputError(f"{volume.image}: expected a 3D scalar volume, got shape {arr.shape}")
    mask = read_mask(volume, image)
    prob = coarse_probability(volume, image)
    low, high = display_range(volume, arr)
    scaled = np.clip((arr - low) / (high - low), 0, 1)
    shown, controls = select_slices(mask, control_fraction)
    spacing = image.GetSpacing()
    for z, control in [(z, False) for z in shown] + [(z, True) for z in controls]:
        yield {
            "case": case_id(volume, z, control),
            "z": z,
            "control": control,
            "image": np.round(scaled[z] * 65535).astype(np.uint16),
            "mask": mask[z],
            "prob": prob[z],
            "spacing": (float(spacing[1]), float(spacing[0])),
        }


# ------------------------------------------------------------------------------------------------- folds


def patient_folds(patients, collections: dict) -> dict:
    """Leave one patient out: {test patient: {"train", "val", "test"}} with patient lists.

    Validation (model selection) takes the next patient after the test patient, in sorted cyclic order, from a
    collection that has at least three patients, so that no fold gives the only patient of a collection (the only
    lungs and ribs) to validation instead of training. With fewer than three patients there is no validation
    patient to spare and an InputError is raised.
    """
    patients = sorted(patients)
    if len(patients) < 3:
        raise InputError(f"leave-one-patient-out needs at least 3 patients (train, val, test), got {patients}")
    counts = {c: sum(collections[p] == c for p in patients) for c in set(collections[p] for p in patients)}
    spare = [p for p in patients if counts[collections[p]] >= 3] or patients
    folds = {}
    for i, test in enumerate(patients):
        order = patients[i + 1 :] + patients[:i]
        val = next((p for p in order if p in spare), order[0])
        folds[test] = {"train": [p for p in order if p != val], "val": [val], "test": [test]}
    return folds


# ------------------------------------------------------------------------------------------------ writing


def _link(src: Path, dst: Path) -> None:
    """Hard link ``src`` at ``dst`` (a copy where the file system has none): the folds share one set of slices."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_real_slices(sample_dir, out_dir, control_fraction: float = 0.2) -> dict:
    """Write the real-slice refiner source folders (see module docstring); returns {"cases": rows, "folds": ...}."""
    if not 0 <= control_fraction <= 1:
        raise InputError(f"control_fraction must be in [0, 1], got {control_fraction}")
    volumes = find_volumes(sample_dir)
    out = Path(out_dir)
    store = out / "slices"
    # a rebuild (another control fraction, fewer patients) must not leave the previous run's slices beside the new
    # splits: refiner-setup would take them in
    for old in [store, *out.glob("fold_*")]:
        if old.is_dir():
            shutil.rmtree(old)
    rows, scores = [], {}
    for volume in volumes:
        for s in volume_slices(volume, control_fraction):
            save_png(s["image"], store / "images" / f"{s['case']}.png")
            save_png((s["mask"] * 255).astype(np.uint8), store / "labels" / f"{s['case']}.png")
            with atomic_path(store / f"{s['case']}_probabilities.npy") as tmp:
                np.save(tmp, np.stack([1 - s["prob"], s["prob"]]).astype(np.float32))
            scores[s["case"]] = dice(s["prob"] > MASK_THRESHOLD, s["mask"])
            rows.append(
                {
                    "case": s["case"],
                    "patient": volume.patient,
                    "collection": volume.collection,
                    "modality": volume.modality,
                    "structure": volume.structure,
                    "slice": s["z"],
                    "control": s["control"],
                    "coarse_dice": scores[s["case"]],
                    "mask_pixels": int(s["mask"].sum()),
                    "height": int(s["mask"].shape[0]),
                    "width": int(s["mask"].shape[1]),
                    "row_mm": s["spacing"][0],
                    "col_mm": s["spacing"][1],
                }
            )
    save_json(scores, store / "patient_dice_scores.json")
    collections = {r["patient"]: r["collection"] for r in rows}
    folds = patient_folds(sorted(collections), collections)
    by_patient = {p: [r["case"] for r in rows if r["patient"] == p] for p in collections}
    for test, plan in folds.items():
        fold = out / f"fold_{test}"
        for r in rows:
            for rel in (f"images/{r['case']}.png", f"labels/{r['case']}.png", f"{r['case']}_probabilities.npy"):
                _link(store / rel, fold / rel)
        _link(store / "patient_dice_scores.json", fold / "patient_dice_scores.json")
        splits = {k: sorted(c for p in plan[k] for c in by_patient[p]) for k in ("train", "val", "test")}
        save_json(splits, fold / "comprehensive_splits.json")
    save_table(rows, out / "cases.csv")
    save_json(folds, out / "folds.json")
    return {"cases": rows, "folds": folds}


def summarize_coarse(rows: list) -> list:
    """Coarse Dice per patient, scan and structure (slices with the structure; controls counted apart)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["patient"], r["modality"], r["structure"]), []).append(r)
    out = []
    for (patient, modality, structure), rs in sorted(groups.items()):
        shown = [r["coarse_dice"] for r in rs if not r["control"]]
        out.append(
            {
                "patient": patient,
                "modality": modality,
                "structure": structure,
                "slices": len(shown),
                "controls": len(rs) - len(shown),
                "coarse_dice": float(np.mean(shown)) if shown else float("nan"),
            }
        )
    return out


# --------------------------------------------------------------------------------------------- reporting


def read_rows(path) -> list:
    """The rows of a CSV (an evaluation's ``metrics.csv``, ``cases.csv``) as dicts of strings."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _group_stats(rows: list) -> dict:
    from custom.mask_refiner.evaluation import HARM_TOLERANCE

    delta = np.array([r["refined_dice"] - r["coarse_dice"] for r in rows])
    shown = [r for r in rows if not r["control"]]
    return {
        "refined_dice": float(np.mean([r["refined_dice"] for r in rows])),
        "refined_dice_structure_slices": float(np.mean([r["refined_dice"] for r in shown])) if shown else None,
        "mean_delta_dice": float(delta.mean()),
        "harm_rate": float((delta < -HARM_TOLERANCE).mean()),
        "harmed": int((delta < -HARM_TOLERANCE).sum()),
        "improved_rate": float((delta > HARM_TOLERANCE).mean()),
    }


def pool_evaluations(cases_csv, evals: dict) -> dict:
    """Pool the per-image rows (``metrics.csv`` of refiner-evaluate) of every held-out fold, per model.

    ``evals``: {model name: [metrics.csv of each fold]}. Groups: each held-out patient, each patient's scan and
    structure, each structure on each kind of scan (over patients), and all images; per group the coarse Dice and,
    per model, the refined Dice, the mean per-image change and the harm rate (share of images whose Dice drops by
    more than the evaluation's tolerance).
    """
    from custom.mask_refiner.evaluation import HARM_TOLERANCE

    info = {r["case"]: r for r in read_rows(cases_csv)}
    per_model = {}
    for name, paths in evals.items():
        rows = []
        for path in paths:
            for r in read_rows(path):
                if r["case_id"] not in info:
                    raise InputError(f"{path}: case {r['case_id']} is not in {cases_csv}")
                meta = info[r["case_id"]]
                rows.append(
                    {
                        "case": r["case_id"],
                        "patient": meta["patient"],
                        "scan": meta["modality"],
                        "structure": meta["structure"],
                        "control": meta["control"] == "True",
                        "coarse_dice": float(r["coarse_dice"]),
                        "refined_dice": float(r["refined_dice"]),
                    }
                )
        per_model[name] = rows
    cases = {name: sorted(r["case"] for r in rows) for name, rows in per_model.items()}
    if len({tuple(c) for c in cases.values()}) > 1:
        raise InputError("the models were evaluated on different images; evaluate them on the same folds")
    first = next(iter(per_model.values()), [])
    keys = [("patient", lambda r: r["patient"]), ("scan", lambda r: (r["patient"], r["scan"], r["structure"]))]
    keys += [("scan type", lambda r: (r["structure"], "on", r["scan"])), ("all", lambda r: "all")]
    groups = []
    for kind, key in keys:
        for value in sorted({key(r) for r in first}, key=str):
            sel = [r for r in first if key(r) == value]
            shown = [r for r in sel if not r["control"]]
            group = {
                "kind": kind,
                "group": " ".join(value) if isinstance(value, tuple) else value,
                "images": len(sel),
                "controls": len(sel) - len(shown),
                "coarse_dice": float(np.mean([r["coarse_dice"] for r in sel])),
                "coarse_dice_structure_slices": float(np.mean([r["coarse_dice"] for r in shown])) if shown else None,
            }
            for name, rows in per_model.items():
                group[name] = _group_stats([r for r in rows if key(r) == value])
            groups.append(group)
    return {"models": list(per_model), "harm_tolerance": HARM_TOLERANCE, "groups": groups}


def render_table(summary: dict) -> str:
    """Markdown tables of :func:`pool_evaluations`: per held-out patient and pooled, then per scan and structure."""
    models = summary["models"]
    head = "| {} | images (controls) | coarse Dice | " + " | ".join(
        f"{m}: refined Dice | {m}: change | {m}: harm" for m in models
    )
    rule = "|---|---|---|" + "---|---|---|" * len(models)

    def line(g):
        cells = [g["group"], f"{g['images']} ({g['controls']})", f"{g['coarse_dice']:.3f}"]
        for m in models:
            s = g[m]
            cells += [f"{s['refined_dice']:.3f}", f"{s['mean_delta_dice']:+.3f}", f"{100 * s['harm_rate']:.0f}%"]
        return "| " + " | ".join(cells) + " |"

    out = [head.format("held-out patient") + " |", rule]
    out += [line(g) for g in summary["groups"] if g["kind"] in ("patient", "all")]
    out += ["", head.format("patient, scan, structure") + " |", rule]
    out += [line(g) for g in summary["groups"] if g["kind"] in ("scan", "scan type")]
    if summary.get("safeguard"):
        out += ["", render_safeguard(summary["safeguard"]).rstrip("\n")]
    return "\n".join(out) + "\n"


def render_safeguard(safeguard: dict) -> str:
    """Markdown table of the safeguard's per-fold choice: the validation patients, min_change, and there the mean
    Dice and harm rate of the trained model without and with it."""
    m = safeguard["model"]
    out = [
        f"Safeguard: {safeguard['rule']}. From 'images' to 'abstained': the validation patients' images; the last "
        "column counts the held-out images given back unchanged.",
        "",
        f"| held-out patient | chosen on (validation) | images | min_change | coarse Dice | {m}: refined Dice | "
        f"{m}+guard: refined Dice | {m}: harm | {m}+guard: harm | abstained | held-out abstained |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for test, c in safeguard["folds"].items():
        cells = [test, ", ".join(c["val"]), str(c["images"]), f"{c['min_change']:.2f}", f"{c['coarse_dice']:.3f}"]
        cells += [f"{c['refined_dice']:.3f}", f"{c['guarded_dice']:.3f}", f"{100 * c['harm_rate']:.0f}%"]
        cells += [f"{100 * c['guarded_harm_rate']:.0f}%", str(c["abstained"]), str(c.get("held_out_abstained", ""))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
