"""MONAI Label app serving the project's bundles from local folders.

Start it with ``monailabel start_server --app apps/monailabel --studies DIR --host 127.0.0.1`` (see README.md).
App settings (``--conf KEY VALUE``):

- ``bundles``: folder holding the bundle folders (default: the repository's ``bundles/``).
- ``models``: comma-separated models to serve (default: every model whose bundle has its config and weights).
- ``model_dir``: where fine-tuned weights are kept (default: ``model/`` in this app folder).
- ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: ``cuda`` when available).

A bundle whose folder or ``models/model.pt`` is missing is left out with a warning in the log, never served with
untrained weights; restart the server once the weights are in place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from fastapi import HTTPException
from lib.bundles import missing_parts
from lib.infers import CTDetailInfer, MaskRefinerInfer, XRayToCTInfer
from lib.trainers import MaskRefinerTrain
from monailabel.interfaces.app import MONAILabelApp

logger = logging.getLogger(__name__)

# model name -> (bundle folder, infer task); the names are the ones used in /infer/<model>
MODELS = {
    "mask_refiner": ("mask_refiner_2d", MaskRefinerInfer),
    "xray2ct": ("xray2ct_cascade_diffusion", XRayToCTInfer),
    "ct_refiner": ("ct_detail_refinement", CTDetailInfer),
}
GENERATORS = ("xray2ct", "ct_refiner")  # their outputs are new images, never labels of the request's image


class XRayCTApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = dict(conf or {})
        self.bundles_dir = Path(conf.get("bundles") or Path(app_dir).resolve().parents[1] / "bundles").resolve()
        self.model_dir = Path(conf.get("model_dir") or Path(app_dir) / "model").resolve()
        wanted = conf.get("models", "")
        self.wanted = [m.strip() for m in wanted.split(",") if m.strip()] if wanted else list(MODELS)
        unknown = sorted(set(self.wanted) - set(MODELS))
        if unknown:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; choose from {sorted(MODELS)}")
        self.device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="X-ray to CT bundles",
            description="Mask refiner, biplanar X-ray to CT reconstruction and CT detail refinement",
            version="0.1.0",
        )

    def _weights(self, model: str) -> list[Path]:
        bundle = self.bundles_dir / MODELS[model][0]
        fine_tuned = [self.model_dir / "mask_refiner_2d" / "model.pt"] if model == "mask_refiner" else []
        return fine_tuned + [bundle / "models" / "model.pt"]

    def init_infers(self):
        infers = {}
        for model in self.wanted:
            folder, task = MODELS[model]
            bundle = self.bundles_dir / folder
            weights = self._weights(model)
            reason = missing_parts(bundle, weights[0] if len(weights) > 1 else None)
            if reason:
                logger.warning(f"model {model!r} is not served: {reason}")
                continue
            infers[model] = task(bundle, self.datastore(), self.device, weights)
            logger.info(f"model {model!r} served from {bundle}")
        return infers

    def init_trainers(self):
        if "mask_refiner" not in self._infers:
            return {}
        bundle = self.bundles_dir / MODELS["mask_refiner"][0]
        return {"mask_refiner": MaskRefinerTrain(bundle, self.model_dir, self._weights("mask_refiner"))}

    def _known(self, kind: str, model, available) -> None:
        if model not in available:
            names = ", ".join(sorted(available)) or "none"
            raise HTTPException(404, f"no {kind} model {model!r} on this server (available: {names})")

    def infer(self, request, datastore=None):
        request = dict(request)
        model = request.get("model")
        self._known("inference", model, self._infers)
        image = request.get("image")
        if isinstance(image, str):
            if not image:
                raise HTTPException(400, "no image given: pass a datastore image id or upload a file")
            if not os.path.exists(image):  # a datastore id, not an uploaded file
                if not (datastore or self.datastore()).get_image_uri(image):
                    raise HTTPException(404, f"no image with id {image!r} in the datastore")
                request["image_id"] = image
        if model in GENERATORS:
            request["save_label"] = False
        return super().infer(request, datastore)

    def train(self, request):
        self._known("training", request.get("model"), self._trainers)
        return super().train(request)
