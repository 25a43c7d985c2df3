"""Mask refiner commands: stand-in data, dataset setup, the whole workflow, held-out evaluation, real slices and
their leave-one-patient-out cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

from custom.cli.common import (
    BUNDLES_DIR,
    as_bool,
    as_choice,
    as_float,
    as_int,
    as_names,
    json_dict,
    need_dir,
    need_dir_path,
)
from custom.core.bundle import load_bundle_network, make_parser, read_bundle_config
from custom.core.errors import InputError

SAFEGUARD_RULE = (
    "min_change chosen per fold on its validation patients only: the value of 0, 0.01, ..., 1 with the best mean "
    "Dice of the trained model there, the largest among equals"
)


class MaskRefinerCommands:
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

        patients, controls = as_int(patients, "--patients", 5), as_int(controls, "--controls", 1)
        width, seed = as_int(width, "--width", 32), as_int(seed, "--seed", 0)
        print(f"stand-in data: {generate_source(need_dir(out_dir), patients, controls, width, seed)}")

    def refiner_setup(self, postprocess_dir: str, output_dir: str, hard_fraction: float = 0.20):
        """Build the refiner dataset (softmax.npz, image.npy, entropy.npy, distance.npy, y_coord.npy, mask.png per
        patient, refiner_splits.json with hardness) from a coarse segmenter's output folder. Resumable.

        Args:
            postprocess_dir: folder with <id>_probabilities.npy, images/, labels/, comprehensive_splits.json and
                patient_dice_scores.json.
            output_dir: output folder.
            hard_fraction: share of training patients, lowest coarse Dice first, that count as hard.
        """
        from custom.mask_refiner.data import setup_dataset

        hard_fraction = _hard_fraction(hard_fraction)
        if not Path(str(postprocess_dir)).is_dir():
            raise InputError(f"{postprocess_dir}: no such folder")
        splits = setup_dataset(postprocess_dir, need_dir(output_dir, "--output_dir"), hard_fraction)
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
        gpus: int | None = None,
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
            gpus: GPUs to train on: 0 for the CPU, 1 for the first GPU (default: the first GPU when there is one).
                Several GPUs train through torchrun with the bundle's multi_gpu_train.json (see its model card).
        """
        from monai.bundle import run

        from custom.mask_refiner.evaluation import evaluate_refiner
        from custom.mask_refiner.samplers import scale_pattern

        extra = json_dict(overrides, example='{"learning_rate": 0.0005}')
        batch_size, max_epochs = as_int(batch_size, "--batch_size", 1), as_int(max_epochs, "--max_epochs", 1)
        hard_fraction = _hard_fraction(hard_fraction)
        device = _device_for_gpus(gpus)
        cfg = Path(bundle) / "configs" / "train.json"
        if not cfg.is_file():
            raise InputError(f"{bundle}: not a bundle folder (no configs/train.json)")
        make_parser(read_bundle_config(bundle, "train.json"), bundle, extra)  # refuses bad overrides before training
        out = need_dir(output_dir, "--output_dir")
        self.refiner_setup(postprocess_dir, out / "data", hard_fraction)
        settings = {
            "bundle_root": str(bundle),
            "dataset_dir": str(out / "data"),
            "output_dir": str(out / "runs"),
            "max_epochs": max_epochs,
            "batch_pattern": scale_pattern(batch_size),
            **({"device": f"$torch.device({device!r})"} if device else {}),
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

        split = as_choice(split, "--split", ("train", "val", "test"))
        if not (Path(data_dir) / "refiner_splits.json").is_file():
            raise InputError(f"{data_dir}: not a refiner dataset (no refiner_splits.json)")
        extra = json_dict(overrides, example='{"learning_rate": 0.0005}')
        need_dir_path(out_dir)
        net, _ = load_bundle_network(bundle, weights, extra)
        summary = evaluate_refiner(net, data_dir, split, need_dir(out_dir))
        print(json.dumps(summary, indent=1))

    def refiner_real(self, sample_dir: str, out_dir: str, control_fraction: float = 0.2):
        """Real 2D slices for the refiner: real scans and masks, coarse maps from a classical weak segmenter, one
        refiner-setup input folder per held-out patient (leave one patient out).

        Takes the axial slices that show each structure (IBSI sarcoma tumours on CT, MR and PET; 3D Slicer's chest
        CT lungs and ribs) plus control slices without it. The coarse maps never read the masks: 40% of the lesion's
        SUVmax on PET, that PET delineation carried onto the co-registered CT and MR, air below -400 HU for the
        lungs, bone above 200 HU for the ribs (see custom/mask_refiner/real_data.py for why each).
        Writes OUT_DIR/slices, OUT_DIR/fold_<patient>/ (images/, labels/, <case>_probabilities.npy,
        comprehensive_splits.json, patient_dice_scores.json), OUT_DIR/cases.csv and OUT_DIR/folds.json.

        Args:
            sample_dir: the folder written by `python -m custom sample-data` (sts/ and chest_ct/slicer_chest/).
            out_dir: output folder.
            control_fraction: control slices per scan and structure, as a share of the slices showing it.
        """
        from custom.mask_refiner.real_data import build_real_slices, summarize_coarse

        control_fraction = as_float(control_fraction, "--control_fraction", 0.0, 1.0, hint=" (a share of slices)")
        if not Path(str(sample_dir)).is_dir():
            raise InputError(f"{sample_dir}: no such folder; make it with `python -m custom sample-data`")
        result = build_real_slices(sample_dir, need_dir(out_dir), control_fraction)
        for row in summarize_coarse(result["cases"]):
            print(
                f"{row['patient']:>13} {row['modality']:>5} {row['structure']:>6}: {row['slices']:3d} slices "
                f"+ {row['controls']} controls, coarse Dice {row['coarse_dice']:.3f}"
            )
        for test, plan in result["folds"].items():
            print(f"fold {test}: train {plan['train']}, val {plan['val']}, test {plan['test']}")

    def refiner_real_crossval(
        self,
        real_dir: str,
        out_dir: str,
        init: str = str(BUNDLES_DIR / "mask_refiner_2d" / "models" / "model.pt"),
        max_epochs: int = 6,
        batches_per_epoch: int = 10,
        val_interval: int = 2,
        learning_rate: float = 3e-4,
        warmup_iterations: int = 5,
        folds: str = "",
        bundle: str = str(BUNDLES_DIR / "mask_refiner_2d"),
        shipped: str = str(BUNDLES_DIR / "mask_refiner_2d" / "models" / "model.pt"),
        safeguard: bool = True,
    ):
        """Leave-one-patient-out training and evaluation of the refiner on real slices (refiner-real output).

        Per fold: refiner-setup of OUT_DIR/<patient>/data, the bundle's train.json (started from --init) into
        OUT_DIR/<patient>/runs (model.pt = best validation Dice on the validation patient), refiner-evaluate of that
        model and of the shipped generated-data model (zero-shot) on the held-out patient into
        OUT_DIR/<patient>/eval_finetuned (eval_scratch without --init) and eval_shipped. Then OUT_DIR/summary.json
        and OUT_DIR/table.md: Dice of coarse vs refined and the harm rate per patient, per scan and structure, and
        pooled. A fold whose training finished before with the same settings (runs/finished.json) is evaluated
        again without retraining; one finished with other settings is refused.

        The refiners are trained and evaluated without the bundle's abstention safeguard (min_change 0). With
        --safeguard (the default), each fold then chooses min_change on its validation patients only (refiner-evaluate
        of the trained model on them into OUT_DIR/<patient>/eval_<model>_val; the value with the best mean Dice, the
        largest among equals) and evaluates the trained model with it on the held-out patient into
        OUT_DIR/<patient>/eval_<model>_guarded: the "<model>+guard" columns and the per-fold choices in the tables.

        Args:
            real_dir: the refiner-real output folder.
            out_dir: output folder.
            init: weights to fine-tune from; empty: train from scratch.
            max_epochs: training epochs per fold.
            batches_per_epoch: batches per epoch.
            val_interval: epochs between validations (model selection on the validation patient).
            learning_rate: peak learning rate.
            warmup_iterations: linear warm-up iterations.
            folds: comma-separated held-out patients to run (default: every fold of folds.json).
            bundle: the mask_refiner_2d bundle folder.
            shipped: the generated-data weights evaluated zero-shot next to the fine-tuned ones.
            safeguard: also choose the safeguard's min_change per fold on its validation patients and evaluate it.
        """
        from monai.bundle import run

        from custom.core.io import atomic_path, save_json
        from custom.mask_refiner.data import setup_dataset
        from custom.mask_refiner.evaluation import evaluate_refiner
        from custom.mask_refiner.real_data import pool_evaluations, read_rows, render_table
        from custom.mask_refiner.safeguard import choose_min_change

        real = Path(str(real_dir))
        if not (real / "folds.json").is_file():
            raise InputError(f"{real_dir}: no folds.json; make it with `python -m custom refiner-real`")
        plan = json.loads((real / "folds.json").read_text())
        chosen = as_names(folds, "--folds") or list(plan)
        unknown = [f for f in chosen if f not in plan]
        if unknown:
            raise InputError(f"--folds: no fold for {unknown}; the folds are {list(plan)}")
        settings = {
            "max_epochs": as_int(max_epochs, "--max_epochs", 1),
            "batches_per_epoch": as_int(batches_per_epoch, "--batches_per_epoch", 1),
            "val_interval": as_int(val_interval, "--val_interval", 1),
            "learning_rate": as_float(learning_rate, "--learning_rate", above=0.0),
            "warmup_iterations": as_int(warmup_iterations, "--warmup_iterations", 0),
        }
        safeguard = as_bool(safeguard, "--safeguard")
        if not shipped:
            raise InputError("--shipped: give the generated-data weights to compare with (the bundle's model.pt)")
        for weights in [w for w in (init, shipped) if w]:
            if not Path(str(weights)).is_file():
                raise InputError(f"{weights}: no such weights file")
        # the starting weights by file, not by how their path was written: the same file given another way is the same
        # run, a replaced one is not
        init_id = ""
        if init:
            st = Path(str(init)).stat()
            init_id = {"path": str(Path(str(init)).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        cfg = Path(bundle) / "configs" / "train.json"
        if not cfg.is_file():
            raise InputError(f"{bundle}: not a bundle folder (no configs/train.json)")
        out = need_dir(out_dir)
        # the refiners as they are, without the bundle's default safeguard: "before" columns, and the unguarded
        # outputs the fold's min_change is chosen on
        plain = {"min_change": 0.0}
        shipped_net, _ = load_bundle_network(bundle, shipped, plain)
        trained = "finetuned" if init else "scratch"
        guarded = f"{trained}+guard"
        evals = {"shipped": [], trained: [], **({guarded: []} if safeguard else {})}
        choices = {}
        for test in chosen:
            fold = out / test
            setup_dataset(real / f"fold_{test}", fold / "data")
            runs = fold / "runs"
            done = {**settings, "init": init_id, "bundle": str(Path(bundle).resolve()), "fold": plan[test]}
            if (runs / "finished.json").is_file():
                before = json.loads((runs / "finished.json").read_text())
                if before != done:
                    raise InputError(
                        f"{runs}: trained before with other settings ({before}); give another out_dir to train with "
                        f"{done}"
                    )
            else:
                configs = [str(cfg)]
                if init:
                    # appended to train.json's handlers: the run starts from these weights instead of at random
                    start = {
                        "init_from": str(Path(str(init)).resolve()),
                        "+train#handlers": [
                            {
                                "_target_": "custom.core.handlers.InitFromWeights",
                                "network": "@network",
                                "path": "@init_from",
                            }
                        ],
                    }
                    save_json(start, runs / "init_from.json")
                    configs.append(str(runs / "init_from.json"))
                # model selection on the unguarded validation Dice, as the folds trained before the safeguard existed
                run(
                    config_file=configs,
                    bundle_root=str(bundle),
                    dataset_dir=str(fold / "data"),
                    output_dir=str(runs),
                    **plain,
                    **settings,
                )
                save_json(done, runs / "finished.json")
            net, _ = load_bundle_network(bundle, runs / "model.pt", plain)
            for name, model in ((trained, net), ("shipped", shipped_net)):
                evaluate_refiner(model, fold / "data", "test", fold / f"eval_{name}")
                evals[name].append(fold / f"eval_{name}" / "metrics.csv")
            if safeguard:
                evaluate_refiner(net, fold / "data", "val", fold / f"eval_{trained}_val")
                choice = choose_min_change(read_rows(fold / f"eval_{trained}_val" / "metrics.csv"))
                net_guarded, _ = load_bundle_network(bundle, runs / "model.pt", {"min_change": choice["min_change"]})
                evaluate_refiner(net_guarded, fold / "data", "test", fold / f"eval_{trained}_guarded")
                evals[guarded].append(fold / f"eval_{trained}_guarded" / "metrics.csv")
                # reported, never used for the choice: how many held-out images the guard gave back unchanged
                changes = [float(r["mask_change"]) for r in read_rows(fold / f"eval_{trained}" / "metrics.csv")]
                held_out = sum(0 < c < choice["min_change"] for c in changes)
                choices[test] = {"val": plan[test]["val"], **choice, "held_out_abstained": held_out}
        summary = pool_evaluations(real / "cases.csv", evals)
        summary["folds"] = {t: plan[t] for t in chosen}
        summary["training"] = {**settings, "init": init_id}
        if safeguard:
            summary["safeguard"] = {"model": trained, "rule": SAFEGUARD_RULE, "folds": choices}
        save_json(summary, out / "summary.json")
        table = render_table(summary)
        with atomic_path(out / "table.md", suffix=".md") as tmp:
            Path(tmp).write_text(table)
        print(table)


def _hard_fraction(value) -> float:
    value = as_float(value, "--hard_fraction", above=0.0, hint=" (a share of the training patients)")
    if not value < 1:
        raise InputError(f"--hard_fraction must be below 1 (a share of the training patients), got {value:g}")
    return value


def _device_for_gpus(gpus) -> str | None:
    """The torch device for ``--gpus`` (None: the bundle's own default, the first GPU when there is one)."""
    if gpus is None:
        return None
    import torch

    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise InputError(f"--gpus must be a whole number >= 0 (0: the CPU, 1: one GPU), got {gpus!r}")
    if gpus == 0:
        return "cpu"
    if gpus > 1:
        raise InputError(
            f"--gpus {gpus}: this command trains on one GPU; for several, run the bundle's train.json with "
            "multi_gpu_train.json under torchrun (see bundles/mask_refiner_2d/docs/README.md)"
        )
    if not torch.cuda.is_available():
        raise InputError(f"--gpus {gpus}: no GPU is available here; use --gpus 0 (or leave it out) to train on the CPU")
    return "cuda:0"
