"""Turn a folder of CTs (NIfTI files, DICOM series) into a MONAI datalist of CT + biplanar DRR cases.

Per case, in ``OUT/cases/<case_id>/``: ``ct.nii.gz`` (HU at ``size``^3 over a ``cube_mm`` cube, int16),
``frontal.nii.gz`` and ``lateral.nii.gz`` (DRR line integrals, see :mod:`custom.core.physics`), ``preview.png`` and
``case.json`` (settings and provenance). The CT is stored in HU, not windowed: the window is a training setting
(one config key of the bundle), so changing it must not require preparing the data again.

Runs are resumable and idempotent: a case is built in a hidden temporary folder and renamed into place when
complete, so a crash leaves no half-written case, a re-run removes the temporary folders of a killed run and skips
cases whose ``case.json`` records the same settings. ``shard="I/N"`` processes every N-th case, so several processes
or cluster nodes can share a collection; the datalist (``datalist.json``: ``training``/``validation``/``test``
split by patient with a seeded shuffle) is written by whichever run finds every case done, or by ``merge=True``.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from custom.core.ct import _maybe_dicom, _series_headers, is_volume_file, segmentation_reason
from custom.core.errors import InputError
from custom.core.io import atomic_dir, remove_stale_temporaries, save_json
from custom.core.memory import check_memory

SPLITS = ("training", "validation", "test")
IGNORED_FOLDERS = {"labels", "label", "masks", "mask", "segmentations"}
FORMAT_VERSION = 2  # 2: area downsizing; CT affine centred on the isocentre


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_id: str
    path: str
    series_uid: str | None = None


_CT_SUFFIX = re.compile(r"\.(nii(\.gz)?|nrrd|nhdr|mha|mhd)$", flags=re.I)
# detached pixel data of a .mhd/.nhdr header: read with the header, never a case of its own
_DATA_SUFFIXES = (".raw", ".zraw", ".raw.gz", ".img", ".gz")


def _case_id(rel: Path) -> str:
    name = _CT_SUFFIX.sub("", str(rel.as_posix()))
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", name).strip("_") or "case"


@dataclass(frozen=True)
class Skipped:
    """Something under the source that is not a case: its path and why (written to ``skipped.json``)."""

    path: str
    reason: str
    case_id: str | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "reason": self.reason}
        if self.case_id is not None:
            out["case_id"] = self.case_id
        return out


def _detached_data_of(p: Path) -> Path | None:
    """The .mhd/.nhdr header whose pixel data ``p`` holds (same stem, same folder), if any."""
    name = p.name.lower()
    for suffix in _DATA_SUFFIXES:
        if name.endswith(suffix):
            stem = p.name[: -len(suffix)]
            for header in (".mhd", ".nhdr", ".MHD", ".NHDR"):
                if (p.parent / f"{stem}{header}").is_file():
                    return p.parent / f"{stem}{header}"
    return None


def _walk(src: Path, skipped: list):
    """(folder, sorted files) of every folder under ``src``, following symbolic links to folders (a collection
    assembled from links is common) but never into a folder already visited (a link loop, or two links to one
    folder, would repeat cases). Hidden entries and label folders are reported in ``skipped``, not visited."""
    seen = set()

    def unreadable(e: OSError):  # os.walk drops folders it cannot list unless told
        skipped.append(Skipped(str(e.filename), f"a folder that cannot be read ({e.strerror})"))

    for folder, dirs, files in os.walk(src, onerror=unreadable, followlinks=True):
        here = Path(folder)
        real = os.path.realpath(folder)
        if real in seen:
            skipped.append(Skipped(str(here), f"a link to a folder already scanned ({real}); its CTs are not repeated"))
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                skipped.append(Skipped(str(here / d), "a hidden folder (name starting with '.')"))
            elif d.lower() in IGNORED_FOLDERS:
                skipped.append(Skipped(str(here / d), f"a folder of labels or masks (named '{d}'), not CTs"))
            else:
                keep.append(d)
        dirs[:] = keep
        yield here, sorted(files)


def find_cases(source, skipped: list | None = None) -> list[Case]:
    """CT files (NIfTI, NRRD, MetaImage) and CT DICOM series under ``source`` (a folder or one file), sorted by
    case id. Symbolic links to files and folders are followed.

    The patient of a case is the first folder below ``source`` (LIDC-IDRI style ``PATIENT/study/series``) or, for
    files directly in ``source``, the file name; DICOM PatientID wins when present. Folders named ``labels``,
    ``masks`` or ``segmentations``, segmentation files (``*.seg.nrrd``, names containing ``mask``), non-CT series
    and every other file that is not a case are appended to ``skipped`` (a list of :class:`Skipped`) when given:
    nothing is dropped without a reason.
    """
    skipped = [] if skipped is None else skipped
    src = Path(os.fspath(source)).expanduser()
    if not src.exists():
        raise InputError(f"{src}: no such file or folder" + (" (a broken link)" if src.is_symlink() else ""))
    if src.is_file():
        if not is_volume_file(src):
            raise InputError(f"{src}: give a CT file (NIfTI, NRRD or MetaImage) or a folder of CTs")
        why = segmentation_reason(src)
        if why:
            raise InputError(f"{src}: {why}; give the CT itself or a folder of CTs")
        return [Case(_case_id(Path(src.name)), _case_id(Path(src.name)), str(src))]
    cases = []
    dicom_dirs = []
    for folder, files in _walk(src, skipped):
        has_dicom = False
        for name in files:
            p = folder / name
            rel = p.relative_to(src)
            if name.startswith("."):
                skipped.append(Skipped(str(p), "a hidden file (name starting with '.')"))
            elif not p.exists():
                skipped.append(Skipped(str(p), "a broken symbolic link"))
            elif is_volume_file(p):
                why = segmentation_reason(p)
                if why:
                    skipped.append(Skipped(str(p), why))
                    continue
                patient = rel.parts[0] if len(rel.parts) > 1 else _case_id(Path(p.name))
                cases.append(Case(_case_id(rel), _case_id(Path(patient)), str(p)))
            elif _maybe_dicom(p):
                has_dicom = True  # read below, per folder: its files may hold several series
            elif _detached_data_of(p) is not None:
                continue  # the pixel data of a .mhd/.nhdr case, read with it (not a skip)
            else:
                skipped.append(Skipped(str(p), "not a CT file format prepare reads (NIfTI, NRRD, MetaImage, DICOM)"))
        if has_dicom:
            dicom_dirs.append(folder)
    for d in dicom_dirs:
        rel = d.relative_to(src)
        rejected: list = []
        headers = _series_headers(d, rejected=rejected)
        skipped.extend(Skipped(str(f), why) for f, why in rejected)
        series = {}
        for uid, items in headers.items():
            modality = str(getattr(items[0][1], "Modality", "CT"))
            if modality == "CT":
                series[uid] = items
            else:
                skipped.append(
                    Skipped(str(d), f"DICOM series {uid} ({len(items)} files) has modality {modality}, not CT")
                )
        for n, (uid, items) in enumerate(sorted(series.items())):
            patient = str(getattr(items[0][1], "PatientID", "") or (rel.parts[0] if rel.parts else d.name))
            cid = _case_id(rel if rel.parts else Path(d.name)) + (f"__s{n}" if len(series) > 1 else "")
            cases.append(Case(cid, _case_id(Path(patient)), str(d), uid))
    if not cases:
        raise InputError(
            f"{src}: no CT files (NIfTI, NRRD, MetaImage) or CT DICOM series found"
            + (f"; skipped: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:5])}" if skipped else "")
        )
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dups = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"{src}: two inputs map to the same case id ({', '.join(dups)}); rename one of them")
    return sorted(cases, key=lambda c: c.case_id)


def assign_splits(patients, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict:
    """Seeded patient-level split; at least one training patient, validation/test only when there are enough."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"val_fraction + test_fraction must be below 1, got {val_fraction} and {test_fraction}")
    pats = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(pats))
    n_test = int(round(test_fraction * len(pats)))
    n_val = int(round(val_fraction * len(pats)))
    if n_test + n_val >= len(pats):
        n_test, n_val = max(0, min(n_test, len(pats) - 1)), 0
    split = {}
    for rank, i in enumerate(order):
        split[pats[i]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
    return split


def _settings(size, detector_size, geometry, cube_mm, iso_spacing, mu_water) -> dict:
    from custom.core.physics import get_geometry

    geo = get_geometry(geometry, detector_size or size)
    return {
        "format_version": FORMAT_VERSION,
        "size": int(size),
        "cube_mm": float(cube_mm),
        "iso_spacing": float(iso_spacing),
        "geometry_name": str(geometry),
        "geometry": geo.to_dict(),
        "views": {"frontal": 0.0, "lateral": 90.0},
        "mu_water": float(mu_water),
        "ct_units": "HU",
        "drr_units": "line integral of mu (dimensionless)",
    }


def case_memory_bytes(settings: dict) -> int:
    """Peak bytes of building one case: the CT resampled to the isotropic cube, resized to ``size``^3 (several
    float32 copies while resampling; measured 110 bytes per voxel at 256^3, rounded up) and its two DRRs."""
    from custom.core.physics import drr_memory_bytes

    size, detector = settings["size"], settings["geometry"]["detector_pixels"]
    iso = int(round(settings["cube_mm"] / settings["iso_spacing"]))
    return int(12 * iso**3 + 64 * size**3 + drr_memory_bytes((size,) * 3, detector))


def _separable_weights(n_out: int, src_index, valid, n_src: int):
    """Linear interpolation along one axis: for each output voxel the two source neighbours (clamped indices) and
    their weights, zero where a neighbour lies outside the source or the output voxel is padding (``valid``
    False). Zero outside is MONAI's ``padding_mode="zeros"``: the shifted HU there is 0, i.e. -1024 HU."""
    import torch

    i0 = np.floor(src_index)
    w = src_index - i0
    i0 = i0.astype(np.int64)
    in0 = valid & (i0 >= 0) & (i0 < n_src)
    in1 = valid & (i0 + 1 >= 0) & (i0 + 1 < n_src)
    w0 = torch.as_tensor(np.where(in0, 1.0 - w, 0.0), dtype=torch.float32)
    w1 = torch.as_tensor(np.where(in1, w, 0.0), dtype=torch.float32)
    idx0 = torch.as_tensor(np.clip(i0, 0, n_src - 1))
    idx1 = torch.as_tensor(np.clip(i0 + 1, 0, n_src - 1))
    return idx0, idx1, w0, w1


def preprocess_ct_fast(ct, size: int = 128, cube_mm: float = 320.0, iso_spacing: float = 1.0):
    """:func:`custom.core.transforms.preprocess_ct` for an axis-aligned CT, computed separably: same result (within
    float32 rounding; ``tests/datasets/test_prepare_fast.py``), about 10x faster on a 512 x 512 CT.

    MONAI's ``Spacing`` resamples through ``affine_grid`` + ``grid_sample``: for a 512 x 512 x 64 chest CT at
    1 mm that is a 430 x 430 x 316 grid of float32 coordinates (700 MB) built and read back, 7 of the 9 s of a
    case, most of it for voxels the crop to the cube then throws away. For an axis-aligned volume (every volume
    ``load_ct`` returns) trilinear interpolation factors into three 1D linear interpolations, and only the
    ``cube_mm`` cube's voxels need computing. The grids themselves (output shape, origin after the crop or pad)
    are still MONAI's: ``Spacing`` and ``ResizeWithPadOrCrop`` run lazily to report them, and the final
    anti-aliased ``Resize`` is MONAI's own, so the result cannot drift from ``preprocess_ct``. Anything else
    (an oblique affine) goes through ``preprocess_ct`` itself.

    Args:
        ct: MetaTensor (1, X, Y, Z) in HU with an affine, as :func:`custom.core.ct.load_ct` returns.
        size: voxels per side of the output cube.
        cube_mm: side of the cube in mm (centred on the volume's centre as ``ResizeWithPadOrCrop`` centres).
        iso_spacing: isotropic spacing of the intermediate resampling in mm.

    Returns:
        MetaTensor (1, size, size, size), HU, RAS affine with spacing ``cube_mm / size``.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize, ResizeWithPadOrCrop, Spacing

    from custom.core.ct import HU_MIN
    from custom.core.transforms import _already_on_grid, preprocess_ct

    if _already_on_grid(ct, size, cube_mm) or int(size) < 2:
        return preprocess_ct(ct, size, cube_mm, iso_spacing)
    ras = Orientation(axcodes="RAS", labels=None)(ct)
    a0 = np.asarray(ras.affine, dtype=np.float64)
    lin = a0[:3, :3]
    if not (np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6 * np.abs(lin).max()) and np.all(np.diag(lin) > 0)):
        return preprocess_ct(ct, size, cube_mm, iso_spacing)
    n_iso = max(int(round(cube_mm / iso_spacing)), int(size))
    # MONAI's grids, lazily: a zero-stride stand-in of the CT's shape, so no pixel is touched
    probe = MetaTensor(torch.zeros(1).expand(1, *ras.shape[1:]), affine=torch.as_tensor(a0))
    spaced = Spacing(pixdim=(iso_spacing,) * 3, mode="bilinear", padding_mode="zeros", lazy=True)(probe)
    a1 = np.asarray(spaced.peek_pending_affine(), dtype=np.float64)
    shape1 = [int(s) for s in spaced.peek_pending_shape()]
    cube = ResizeWithPadOrCrop(spatial_size=(n_iso,) * 3, mode="constant", lazy=True)(spaced)
    a2 = np.asarray(cube.peek_pending_affine(), dtype=np.float64)
    if not np.allclose(a1[:3, :3], a2[:3, :3]) or not np.allclose(np.diag(a1)[:3], iso_spacing):
        return preprocess_ct(ct, size, cube_mm, iso_spacing)

    vol = ras.as_tensor()[0].float() - HU_MIN  # zero is -1024 HU: what resampling and padding bring in is air
    for axis in range(3):  # z last: it grows the most (64 slices -> 320), so the first two passes stay small
        j = np.arange(n_iso, dtype=np.float64)
        g = np.round((a2[axis, 3] - a1[axis, 3]) / a1[axis, axis]) + j  # index on Spacing's grid; outside: padding
        valid = (g >= 0) & (g < shape1[axis])
        src = (a1[axis, 3] + a1[axis, axis] * g - a0[axis, 3]) / a0[axis, axis]  # continuous source index
        idx0, idx1, w0, w1 = _separable_weights(n_iso, src, valid, vol.shape[axis])
        # gather whole contiguous slabs along the first dimension with advanced indexing: gathering along an inner
        # dimension goes element by element, and torch's index_select was 25x slower than indexing when it
        # repeats rows (64 slices -> 320)
        slabs = vol.movedim(axis, 0).contiguous()
        w0, w1 = w0[:, None, None], w1[:, None, None]
        vol = (slabs[idx0] * w0 + slabs[idx1] * w1).movedim(0, axis)
    vol = vol.contiguous()
    meta = {k: v for k, v in ras.meta.items() if k not in ("affine", "pixdim", "spatial_shape")}
    out = MetaTensor(vol[None], affine=torch.as_tensor(a2), meta=meta)
    out = Resize(spatial_size=(int(size),) * 3, mode="area" if int(size) < n_iso else "trilinear")(out)
    return (out + HU_MIN).clamp(min=HU_MIN)


def _case_done(case_dir: Path, settings: dict) -> bool:
    meta = case_dir / "case.json"
    if not meta.is_file():
        return False
    try:
        with open(meta) as f:
            return json.load(f).get("settings") == settings
    except (OSError, ValueError):
        return False


def _build_case(case: Case, cases_dir: str, settings: dict, threads: int) -> tuple[str, str | None, str | None]:
    """Build one case; returns (case_id, error or None, warning or None). Runs in worker processes."""
    import torch

    from custom.core.ct import load_ct
    from custom.core.io import save_nifti, save_png
    from custom.core.physics import DRR, ProjectionGeometry
    from custom.core.transforms import cube_affine
    from custom.core.visualize import ct_slices_display, hstack, xray_display
    from custom.core.xray import save_xray
    from custom.datasets.drr import coverage_warning

    torch.set_num_threads(max(1, threads))
    try:
        with atomic_dir(Path(cases_dir) / case.case_id) as tmp:  # replaces a case of stale settings when complete
            ct = load_ct(case.path, series_uid=case.series_uid)
            hu = preprocess_ct_fast(ct, settings["size"], settings["cube_mm"], settings["iso_spacing"])
            geo = ProjectionGeometry(**settings["geometry"])
            warning = coverage_warning(ct, geo)
            with torch.no_grad():
                drr = DRR(geo, ("frontal", "lateral"), settings["mu_water"])(hu[None])[0]
            # centred on the origin like the DRR isocentre and every reconstruction, so they overlay in a viewer
            affine = cube_affine(settings["size"], settings["cube_mm"])
            save_nifti(hu[0].numpy(), affine, tmp / "ct.nii.gz", dtype=np.int16, description="CT in HU")
            save_xray(drr[0], geo, tmp / "frontal.nii.gz")
            save_xray(drr[1], geo, tmp / "lateral.nii.gz")
            preview = hstack(ct_slices_display(hu[0]) + [xray_display(drr[0]), xray_display(drr[1])], height=192)
            save_png(preview, tmp / "preview.png")
            save_json(
                {
                    "case_id": case.case_id,
                    "patient_id": case.patient_id,
                    "source": case.path,
                    "series_uid": case.series_uid,
                    "settings": settings,
                    "source_spacing": [float(s) for s in ct.pixdim[:3]],
                    "source_shape": [int(s) for s in ct.shape[1:]],
                    "resampled_from_oblique": bool(ct.meta.get("resampled_from_oblique", False)),
                    "warnings": [warning] if warning else [],
                },
                tmp / "case.json",
            )
        return case.case_id, None, warning
    except InputError as e:
        return case.case_id, str(e), None
    except Exception as e:  # one unreadable case must not stop a 1000-case run; it is reported at the end
        return case.case_id, f"{type(e).__name__}: {e}", None


def _parse_shard(shard) -> tuple[int, int]:
    if isinstance(shard, (tuple, list)) and len(shard) == 2:
        i, n = shard
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
        if not m:
            raise InputError(f"shard must look like I/N (e.g. 0/4), got {shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard I/N needs 0 <= I < N, got {i}/{n}")
    return int(i), int(n)


def write_datalist(out_dir: Path, cases: list[Case], split_of: dict, settings: dict) -> dict:
    out = {s: [] for s in SPLITS}
    for c in cases:
        rel = f"cases/{c.case_id}"
        out[split_of[c.patient_id]].append(
            {
                "case_id": c.case_id,
                "patient_id": c.patient_id,
                "ct": f"{rel}/ct.nii.gz",
                "frontal": f"{rel}/frontal.nii.gz",
                "lateral": f"{rel}/lateral.nii.gz",
            }
        )
    out["settings"] = settings
    save_json(out, out_dir / "datalist.json")
    return out


def prepare_dataset(
    source,
    out_dir,
    size: int = 128,
    detector_size: int | None = None,
    geometry: str = "x2ctgan",
    cube_mm: float = 320.0,
    iso_spacing: float = 1.0,
    mu_water: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split: str = "auto",
    num_workers: int = 1,
    shard="0/1",
    merge: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare ``source`` into ``out_dir``; returns a summary dict (see module docstring)."""
    from tqdm.auto import tqdm

    from custom.core.physics import MU_WATER_70KEV

    if out_dir is None or str(out_dir).strip() == "":
        raise InputError("give an output folder (out_dir)")
    if split not in ("auto",) + SPLITS:
        raise InputError(f"split must be 'auto' or one of {SPLITS}, got {split!r}")
    if int(num_workers) < 1:
        raise InputError(f"num_workers must be >= 1, got {num_workers}")
    i_shard, n_shard = _parse_shard(shard)
    out_dir = Path(os.fspath(out_dir)).expanduser()
    cases_dir = out_dir / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    for folder in (cases_dir, out_dir):  # half-built cases and files of a run that was killed
        remove_stale_temporaries(folder)
    settings = _settings(size, detector_size, geometry, cube_mm, iso_spacing, mu_water or MU_WATER_70KEV)
    skipped: list[Skipped] = []
    cases = find_cases(source, skipped)
    if split == "auto":
        split_of = assign_splits([c.patient_id for c in cases], seed, val_fraction, test_fraction)
    else:
        split_of = {c.patient_id: split for c in cases}

    mine = [c for n, c in enumerate(cases) if n % n_shard == i_shard]
    todo = [] if merge else [c for c in mine if not _case_done(cases_dir / c.case_id, settings)]
    if todo:
        workers = min(int(num_workers), len(todo))
        check_memory(
            case_memory_bytes(settings) * workers,
            f"building {workers} case(s) at once at size {settings['size']} with "
            f"{settings['geometry']['detector_pixels']} px DRRs",
            "--size, --detector_size" + (" or --num_workers" if workers > 1 else ""),
        )
    failed, warnings = {}, {}
    threads = max(1, (os.cpu_count() or 1) // int(num_workers))
    bar = tqdm(total=len(todo), desc=f"prepare {i_shard}/{n_shard}", unit="case", disable=not progress)
    if int(num_workers) == 1:
        for c in todo:
            cid, err, warning = _build_case(c, str(cases_dir), settings, threads)
            if err:
                failed[cid] = err
            if warning:
                warnings[cid] = warning
            bar.update()
    elif todo:
        try:
            with ProcessPoolExecutor(int(num_workers), mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_build_case, c, str(cases_dir), settings, threads) for c in todo]
                for fut in as_completed(futures):
                    cid, err, warning = fut.result()
                    if err:
                        failed[cid] = err
                    if warning:
                        warnings[cid] = warning
                    bar.update()
        except BrokenProcessPool:
            raise InputError(
                "a worker process died (out of memory? try fewer --num_workers); finished cases are kept, "
                "run the same command again to continue"
            ) from None
    bar.close()

    if failed:
        save_json(failed, out_dir / f"failed.shard-{i_shard}-of-{n_shard}.json")
    # everything under the source that is not in the datalist, with the reason; written on every run (an empty list
    # included) so that a stale list of an earlier run never stays behind
    skipped += [Skipped(next(c.path for c in cases if c.case_id == cid), err, cid) for cid, err in failed.items()]
    skipped_file = out_dir / ("skipped.json" if n_shard == 1 else f"skipped.shard-{i_shard}-of-{n_shard}.json")
    save_json([s.to_dict() for s in skipped], skipped_file)
    done = [c for c in cases if _case_done(cases_dir / c.case_id, settings)]
    missing = [c.case_id for c in cases if c not in done and c.case_id not in failed]
    summary = {
        "cases": len(cases),
        "this_shard": len(mine),
        "built": len(todo) - len(failed),
        "skipped_done": len(mine) - len(todo) if not merge else 0,
        "failed": failed,
        "warnings": warnings,
        "missing_other_shards": missing,
        "skipped": [s.to_dict() for s in skipped],
        "skipped_file": str(skipped_file),
        "datalist": None,
    }
    if not missing and done:
        write_datalist(out_dir, done, split_of, settings)
        summary["datalist"] = str(out_dir / "datalist.json")
        summary["split_counts"] = {s: sum(split_of[c.patient_id] == s for c in done) for s in SPLITS}
    return summary
