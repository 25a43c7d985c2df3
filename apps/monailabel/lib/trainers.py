"""MONAI Label train task for the mask refiner: fine-tune on the labels clinicians saved in the datastore.

An image takes part when it has both a final label (the corrected mask, tag ``final``) and a coarse probability map
(tag ``coarse``). They are written in the layout of a coarse segmenter's output folder and turned into the refiner
dataset by the project's own ``setup_dataset`` (channels, hardness from the coarse Dice), then the bundle's
``configs/train.json`` runs on it, starting from the weights currently served. The best checkpoint by validation
Dice is published to the app's model folder, where the infer task picks it up at its next request.

Training and its model selection are unguarded (train.json's ``min_change`` 0). The safeguard's value for the new
weights is then chosen on the run's own validation images: the best checkpoint is evaluated with ``min_change`` 0
(``evaluate_refiner``, as ``refiner-real-crossval`` does per fold) and ``choose_min_change`` picks the value. It is
published next to the weights as ``model.json`` with their SHA-256 (:func:`min_change_record`); the infer task applies
it only to the weights with that SHA-256.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException
from monailabel.interfaces.tasks.train import TrainTask

from custom.core.bundle import load_bundle_network, load_weights, make_parser, read_bundle_config
from custom.core.errors import InputError
from custom.core.io import atomic_path, save_json
from custom.core.xray import load_xray
from custom.mask_refiner.data import MASK_THRESHOLD, dice, setup_dataset
from custom.mask_refiner.evaluation import evaluate_refiner
from custom.mask_refiner.real_data import read_rows
from custom.mask_refiner.safeguard import choose_min_change, min_change_record

from .bundles import file_sha256, sidecar_path
from .guards import check_id, id_problem

logger = logging.getLogger(__name__)


def _uv(path: str) -> np.ndarray:
    """A 2D image or label as a (U, V) float array, the layout the infer task uses."""
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        arr = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        return arr.reshape([s for s in arr.shape if s != 1]) if arr.ndim > 2 else arr
    return np.asarray(load_xray(path)[0], dtype=np.float32)


def batch_pattern(hardness: dict, batch_size: int) -> dict:
    """The bundle's 5 hard / 1 control / 2 random batch scaled to ``batch_size``, dropping groups with no images."""
    from custom.mask_refiner.samplers import scale_pattern

    pattern = scale_pattern(batch_size)
    for group in ("hard", "control"):
        if not any(h == group for h in hardness.values()):
            pattern["random"] += pattern.pop(group)
    return pattern


class MaskRefinerTrain(TrainTask):
    """Fine-tune the mask refiner from datastore labels with the bundle's train.json.

    Request params (all optional): ``max_epochs`` (10), ``batch_size`` (8), ``val_fraction`` (0.2),
    ``learning_rate`` (the bundle's), ``final_tag`` (``final``), ``coarse_tag`` (``coarse``).
    """

    def __init__(self, bundle_dir, model_dir, current_weights):
        super().__init__("Fine-tunes the mask refiner on the final labels saved in the datastore")
        self.bundle_dir = Path(bundle_dir)
        self.model_dir = Path(model_dir)
        self.current_weights = [Path(p) for p in current_weights]  # first existing one is the starting point
        self.published = self.model_dir / "mask_refiner_2d" / "model.pt"
        self.published_min_change = sidecar_path(self.published)
        self._stats: dict = {}

    def config(self):
        return {"max_epochs": 10, "batch_size": 8, "val_fraction": 0.2, "final_tag": "final", "coarse_tag": "coarse"}

    def stats(self):
        return dict(self._stats)

    def _collect(self, datastore, final_tag, coarse_tag) -> list[tuple[str, str, str, str]]:
        cases = []
        for image_id in datastore.list_images():
            if id_problem(image_id):  # a file put into the studies folder by hand, under a name no request may use
                logger.warning(f"training skips image {image_id!r}: its id {id_problem(image_id)}")
                continue
            labels = datastore.get_labels_by_image_id(image_id)
            if final_tag in labels and coarse_tag in labels:
                cases.append(
                    (
                        image_id,
                        datastore.get_image_uri(image_id),
                        datastore.get_label_uri(labels[final_tag], final_tag),
                        datastore.get_label_uri(labels[coarse_tag], coarse_tag),
                    )
                )
        return sorted(cases)

    def _write_source(self, cases, src: Path, val_fraction: float, seed: int = 0) -> dict:
        """The coarse segmenter's folder layout that ``setup_dataset`` reads; returns {pid: image id}."""
        (src / "images").mkdir(parents=True)
        (src / "labels").mkdir()
        names, scores = {}, {}
        for k, (image_id, image, final, coarse) in enumerate(cases):
            img, mask, prob = _uv(image), _uv(final) > 0, _uv(coarse)
            if not (img.shape == mask.shape == prob.shape):
                raise InputError(
                    f"image {image_id!r}: image {img.shape}, final label {mask.shape} and coarse map {prob.shape} "
                    "must have the same shape"
                )
            if prob.max() > 1:  # an 8-bit map
                prob = prob / 255.0
            # setup_dataset treats ids starting with "control" as images without a lesion
            pid = f"{'control' if not mask.any() else 'case'}_{k:05d}"
            names[pid] = image_id
            np.save(src / "images" / f"{pid}.npy", img.T)  # the bundle works on (rows, cols)
            np.save(src / "labels" / f"{pid}.npy", (mask.T * 255).astype(np.uint8))
            fg = np.clip(prob.T, 0, 1).astype(np.float32)
            np.save(src / f"{pid}_probabilities.npy", np.stack([1 - fg, fg]))
            scores[pid] = dice(fg > MASK_THRESHOLD, mask.T)
        order = list(np.random.default_rng(seed).permutation(sorted(names)))
        n_val = min(len(order) - 1, max(1, int(round(val_fraction * len(order)))))
        save_json(
            {"train": sorted(order[n_val:]), "val": sorted(order[:n_val]), "test": []},
            src / "comprehensive_splits.json",
        )
        save_json(scores, src / "patient_dice_scores.json")
        return names

    def check(self, request, datastore) -> dict:
        """The training settings and cases of ``request``, or HTTP 400 saying why it cannot train.

        The app calls this in the server process before monailabel submits the background job, so a request with
        bad settings or nothing to train on is refused at once instead of failing later in the job's log.
        """
        final_tag = check_id(request.get("final_tag", "final"), "final_tag")
        coarse_tag = check_id(request.get("coarse_tag", "coarse"), "coarse_tag")
        try:
            settings = {
                "max_epochs": int(request.get("max_epochs", 10)),
                "batch_size": int(request.get("batch_size", 8)),
                "val_fraction": float(request.get("val_fraction", 0.2)),
            }
            if "learning_rate" in request:
                settings["learning_rate"] = float(request["learning_rate"])
        except (TypeError, ValueError) as e:
            raise HTTPException(
                400, f"max_epochs, batch_size, val_fraction and learning_rate must be numbers ({e})"
            ) from None
        if settings["max_epochs"] < 1 or settings["batch_size"] < 1 or not 0 < settings["val_fraction"] < 1:
            raise HTTPException(400, "max_epochs and batch_size must be >= 1 and val_fraction in (0, 1)")
        if "device" in request:
            try:
                settings["device"] = str(torch.device(str(request["device"])))
            except RuntimeError as e:
                raise HTTPException(400, f"device: {e}") from None
        cases = self._collect(datastore, final_tag, coarse_tag)
        if len(cases) < 2:
            raise HTTPException(
                400,
                f"training needs at least 2 images with both a {final_tag!r} label and a {coarse_tag!r} probability "
                f"map in the datastore; found {len(cases)}",
            )
        return dict(settings, cases=cases)

    def __call__(self, request, datastore):
        settings = self.check(request, datastore)
        cases, max_epochs, batch_size = settings["cases"], settings["max_epochs"], settings["batch_size"]
        start = time.time()
        run_dir = self.model_dir / "mask_refiner_2d" / "train"
        shutil.rmtree(run_dir, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="refiner_train_") as tmp:
            try:
                names = self._write_source(cases, Path(tmp) / "source", settings["val_fraction"])
                splits = setup_dataset(Path(tmp) / "source", Path(tmp) / "data")
            except InputError as e:
                raise HTTPException(422, str(e)) from None
            overrides = {
                "dataset_dir": str(Path(tmp) / "data"),
                "output_dir": str(run_dir),
                "max_epochs": max_epochs,
                "val_interval": 1,
                "batch_pattern": batch_pattern(splits["hardness"], batch_size),
                "num_workers": 0,
            }
            if "device" in settings:
                overrides["device"] = f"$torch.device({settings['device']!r})"
            if "learning_rate" in settings:
                overrides["learning_rate"] = settings["learning_rate"]
            parser = make_parser(read_bundle_config(self.bundle_dir, "train.json"), self.bundle_dir, overrides)
            parser.get_parsed_content("initialize")
            start_from = next((p for p in self.current_weights if p.is_file()), None)
            if start_from is not None:
                load_weights(parser.get_parsed_content("network"), start_from)
            parser.get_parsed_content("run")
            trainer = parser.get_parsed_content("train#trainer")
            evaluator = parser.get_parsed_content("validate#evaluator")
            best = run_dir / "model.pt"
            if not best.is_file():
                raise RuntimeError(f"training finished without writing {best}")
            choice = self._choose_min_change(best, Path(tmp) / "data", run_dir / "validation", parser)
            val_ids = [names[pid] for pid in splits["val"]]
            # weights first, then their min_change: until model.json is replaced, the one there names other weights
            # (or none is there) and the infer task serves the new weights with the bundle's value; each file is
            # written under a temporary name and renamed, so neither is ever half-written
            with atomic_path(self.published) as out:
                shutil.copyfile(best, out)
                digest = file_sha256(out)
            save_json(min_change_record(choice, digest, val_ids), self.published_min_change)
        self._stats = {
            "images": len(cases),
            "train": len(splits["train"]),
            "val": len(splits["val"]),
            "epochs": int(trainer.state.epoch),
            "best_val_dice": float(evaluator.state.best_metric),
            "started_from": start_from.name if start_from else None,
            "published": os.path.relpath(self.published, self.model_dir),
            "min_change": choice["min_change"],
            "min_change_validation": choice,
            "min_change_published": os.path.relpath(self.published_min_change, self.model_dir),
            "weights_sha256": digest,
            "seconds": round(time.time() - start, 1),
        }
        logger.info(f"mask refiner trained: {self._stats}")
        return self._stats

    def _choose_min_change(self, weights: Path, data_dir: Path, out_dir: Path, parser) -> dict:
        """:func:`choose_min_change` for ``weights`` on the validation split of ``data_dir``: the network built from
        train.json with ``min_change`` 0 (unguarded, whatever train.json says), evaluated by ``evaluate_refiner``
        (its metrics.csv and summary.json go to ``out_dir``) on the training device. With few validation images
        (one, at the least) the choice is noisy; the rule stays the bundle's."""
        device = parser.get_parsed_content("device")
        net, _ = load_bundle_network(self.bundle_dir, weights, {"min_change": 0.0}, device)
        evaluate_refiner(net, data_dir, "val", out_dir, device=device)
        return choose_min_change(read_rows(out_dir / "metrics.csv"))
