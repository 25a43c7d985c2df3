"""MONAI Label app serving the project's bundles from local folders.

Start it with ``monailabel start_server --app apps/monailabel --studies DIR --host 127.0.0.1`` (see README.md).
App settings (``--conf KEY VALUE``):

- ``bundles``: folder holding the bundle folders (default: the repository's ``bundles/``).
- ``models``: comma-separated models to serve (default: every model whose bundle has its config and weights).
- ``model_dir``: where fine-tuned weights are kept (default: ``model/`` in this app folder).
- ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: ``cuda`` when available).
- ``cors_origins``: comma-separated browser origins allowed to call the server, e.g. a viewer's
  ``http://localhost:3000`` (default: none; ``MONAI_LABEL_CORS_ORIGINS`` adds to them).

What the server refuses (ids that are not plain names, server paths as images, malformed ``params``, other web
sites' pages) is checked in ``lib/guards.py``; README.md lists it. ``--studies http://HOST:PORT/dicom-web`` takes the
images from a DICOMweb server such as Orthanc (``lib/dicomweb.py``): radiographs stay DICOM, xray2ct may be given a
study, and generated volumes are stored back as CT series in their source's study.

A bundle whose folder or ``models/model.pt`` is missing is left out with a warning in the log, never served with
untrained weights; restart the server once the weights are in place.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from fastapi import HTTPException
from lib.bundles import missing_parts
from lib.dicomweb import CheckedDICOMWebDatastore, make_client
from lib.guards import (
    IMAGE_HINT,
    REQUEST_FILES,
    CheckedLocalDatastore,
    allowed_origins,
    check_id,
    configure_cors,
    install_http_guards,
    serve_inference_in_threads,
)
from lib.infers import CTDetailInfer, MaskRefinerInfer, XRayToCTInfer
from lib.trainers import MaskRefinerTrain
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import handle_torch_linalg_multithread, remove_file

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
        self.cors_origins = allowed_origins(conf.get("cors_origins"), settings.MONAI_LABEL_CORS_ORIGINS)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="X-ray to CT bundles",
            description="Mask refiner, biplanar X-ray to CT reconstruction and CT detail refinement",
            version="0.1.0",
        )
        if install_http_guards():  # inside a running server
            from monailabel.app import app as server

            configure_cors(server, self.cors_origins)
            serve_inference_in_threads(server)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                # XNAT and DSA stay monailabel's; the HTTP guards still refuse ids that are not names
                return super().init_datastore()
            # DICOMweb: monailabel's datastore with the app's id checks, radiographs kept as DICOM, results stored
            # back as series; built here because monailabel's own set-up downloads the dcmqi tools from GitHub
            self.studies = self.studies.rstrip("/").strip()
            logger.info(f"DICOMweb datastore: {self.studies}")
            return CheckedDICOMWebDatastore(
                make_client(self.studies, settings),
                cache_path=(settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH)
                or None,
                search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
            )
        return CheckedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
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
        """MONAILabelApp.infer, except for what the image may be.

        The image is a datastore id, or a file monailabel's endpoint received with this very request
        (:data:`REQUEST_FILES`); a client's string is never taken for a server path, and the answer to a path does
        not depend on whether it exists. MONAILabelApp.infer would read any existing path, relative to the server's
        working folder too, which is why this does not call it.
        """
        request = copy.deepcopy(dict(request))
        sent = REQUEST_FILES.get()
        # the endpoint removes its temporary copies of the uploads only after a successful answer
        uploads = [request.get(k) for k, up in (("image", sent.image), ("label", sent.label)) if up and request.get(k)]
        try:
            return self._infer(request, sent, datastore or self.datastore())
        except BaseException:
            for path in uploads:
                remove_file(path)
            raise

    def _infer(self, request, sent, datastore):
        model = request.get("model")
        self._known("inference", model, self._infers)
        task = self._infers[model]
        image = request.get("image")
        if not image:
            raise HTTPException(400, f"no image given: {IMAGE_HINT}")
        if request.get("label") and not sent.label:
            raise HTTPException(400, "a label must be uploaded with the request, not named")
        image_id = None
        if not (sent.image or (sent.session and request.get("session"))):
            image_id = check_id(image, "image", IMAGE_HINT)
            if getattr(task, "picks_own_images", False) and hasattr(datastore, "pick_views"):
                # DICOMweb: the id may be a study, whose radiographs the task picks by their tags
                request["image"], request["image_id"] = "", image_id
            else:
                path = datastore.get_image_uri(image_id)
                # a DICOMweb datastore with NIfTI conversion off serves a series as its folder of DICOM files
                folder_ok = hasattr(datastore, "series_files") and bool(path) and os.path.isdir(path)
                if not path or not (os.path.isfile(path) or folder_ok):
                    raise HTTPException(404, f"no image with id {image_id!r} in the datastore")
                request["image"], request["image_id"] = path, image_id
        save_label = bool(request.get("save_label")) and image_id is not None and model not in GENERATORS
        tag = request.get("label_tag", DefaultLabelTag.ORIGINAL.value)
        if save_label:
            check_id(tag, "label_tag")
        request["save_label"] = save_label
        request["description"] = task.description

        if self._infers_threadpool:

            def run(t, r):
                handle_torch_linalg_multithread(r)
                return t(r)

            result_file, params = self._infers_threadpool.submit(run, task, request).result(
                request.get("timeout", settings.MONAI_LABEL_INFER_TIMEOUT)
            )
        else:
            result_file, params = task(request)
        label = result_file
        if save_label and result_file and os.path.exists(result_file):
            label = datastore.save_label(image_id, result_file, tag, {"model": model, "params": params})
        return {"label": label, "tag": DefaultLabelTag.ORIGINAL, "file": result_file, "params": params}

    def infer_wsi(self, request, datastore=None):
        raise HTTPException(404, "this app offers no whole-slide inference: use POST /infer/<model>")

    def check_train(self, request) -> None:
        """HTTP 4xx now for a train request that would fail: unknown model, bad params, nothing to train on."""
        model = request.get("model")
        self._known("training", model, self._trainers)
        self._trainers[model].check(request, self.datastore())

    def train(self, request):
        self.check_train(request)
        return super().train(request)
