"""MONAI Label infer tasks for the project's three bundles.

Each task reads its bundle's ``configs/inference.json`` with MONAI's ConfigParser and runs the bundle's own network
(and, for X-ray -> CT, its preprocessing and DDIM inferer). Results keep the geometry they should have: the refined
mask has the input image's shape and affine, the reconstructed CT the bundle's cube, the refined CT the input CT's
grid. Nothing is resized to look like the request's image.

Errors in the request become HTTP 4xx responses whose ``detail`` says what is wrong: 400 for a missing or invalid
parameter, 404 for an id that is not in the datastore, 422 for a file that cannot be used (corrupt, 3D where a 2D
X-ray is expected, not a CT in HU...).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from custom.core.bundle import make_parser, read_bundle_config
from custom.core.bundle.errors import input_error_in
from custom.core.ct import load_ct
from custom.core.errors import InputError
from custom.core.io import load_array, save_nifti, save_png
from custom.core.transforms import cube_affine, finer_affine, hu_to_window, preprocess_ct, window_to_hu
from custom.core.xray import intake_record, load_xray
from custom.mask_refiner.data import MASK_THRESHOLD, make_channels
from custom.mask_refiner.safeguard import check_min_change, recorded_min_change
from custom.xray2ct.inferer import build_cascade, parse_stages

from .bundles import WEIGHTS, CachedNetwork, CachedStageNetworks, metadata, sidecar_path
from .guards import check_id

logger = logging.getLogger(__name__)

NIFTI = (".nii", ".nii.gz")
PLAIN_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: str) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _int_param(request: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = request.get(key, default)
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise HTTPException(400, f"{key} must be an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise HTTPException(400, f"{key} must be between {lo} and {hi}, got {number}")
    return number


def _temp_file(suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="monailabel_")
    os.close(fd)
    return path


def output_affine(affine: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Affine of a network output that covers the input's field of view, on the same or a k-times finer grid.

    A super-resolution network returns k voxels per input voxel along an axis; the output keeps the physical extent,
    so its spacing is divided by k and its first voxel centre moves half an output voxel inside the input's first
    voxel. Any other shape change would put the result somewhere it does not belong, and is refused.
    """
    in_shape, out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
    factors = [o / i for o, i in zip(out_shape[-3:], in_shape[-3:])]
    if len(out_shape) != 5 or out_shape[:2] != (1, 1) or any(f < 1 or f != int(f) for f in factors):
        raise RuntimeError(
            f"the CT refiner returned shape {out_shape} for an input of (1, 1, {in_shape}); expected "
            "the same grid or a whole-number upsampling of it"
        )
    return finer_affine(affine, in_shape[-3:], out_shape[-3:])


class LocalBundleTask(InferTask):
    """Shared parts: the bundle's config and cached network, device, datastore and error translation.

    Not MONAI Label's ``BundleInferTask``: that one resizes every output to the request image's shape (wrong for a
    CT made from two X-rays), takes one image per request and names outputs after the input's file type.

    The app passes its datastore so tasks can look up extra inputs by id and register new images. ``id_params``
    names the request parameters that are datastore ids or tags (inputs and outputs): they are checked before the
    task runs, so a request whose output could not be stored is refused before any inference.
    """

    id_params: tuple[str, ...] = ()
    # what MONAI Label's /info/ reports of the task; each task sets its own
    task_type = InferType.OTHERS
    labels: dict | None = None
    dimension = 3
    description = ""
    defaults: dict = {}

    def __init__(self, bundle_dir, datastore, device, weights):
        super().__init__(
            type=self.task_type,
            labels=self.labels,
            dimension=self.dimension,
            description=self.description,
            config=dict(self.defaults),
        )
        self.bundle_dir = Path(bundle_dir)
        self.datastore = datastore
        self.device = device
        self.bundle_config = read_bundle_config(self.bundle_dir)
        self.network = CachedNetwork(self.bundle_config, self.bundle_dir, weights, device)
        self.version = metadata(self.bundle_dir).get("version", "")
        # one request at a time per task: the inferer keeps per-call state (DDIMInferer.last_std)
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def get_path(self, validate=True):
        try:
            return str(self.network.weights_path())
        except FileNotFoundError:
            return None

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["bundle"] = self.bundle_dir.name
        info["version"] = self.version
        return info

    def __call__(self, request):
        for key in self.id_params:
            if request.get(key) not in (None, ""):
                check_id(request[key], key)
        start = time.time()
        try:
            with self._lock:
                result_file, params = self.run(request)
        except HTTPException:
            raise
        except Exception as e:
            cause = input_error_in(e)
            if cause is None:
                raise
            message = str(cause)
            # after the run: it names the inputs it found itself (the lateral view, a study's radiographs)
            names = self._display_names(request)
            for path, name in names.items():  # say which input is wrong without showing server paths
                message = message.replace(path, name)
            raise HTTPException(422, message) from None
        params["latency_s"] = round(time.time() - start, 3)
        return result_file, params

    def _display_names(self, request) -> dict:
        names = {}
        image = request.get("image")
        if isinstance(image, str) and image:
            image_id = request.get("image_id")
            names[image] = f"image {image_id!r}" if image_id else "the uploaded image"
        if isinstance(request.get("label"), str) and request["label"]:
            names[request["label"]] = "the uploaded label"
        names.update(request.get("_display_names", {}))
        return names

    def resolve_id(self, request: dict, key: str, what: str) -> str:
        """The datastore path of the image whose id is in ``request[key]`` (400 if absent, 404 if unknown)."""
        image_id = request.get(key)
        if not image_id or not isinstance(image_id, str):
            raise HTTPException(
                400, f"{self.name} needs the {what}: pass its datastore image id in params as {{{key!r}: '<id>'}}"
            )
        path = self.datastore.get_image_uri(image_id)
        if not path or not os.path.isfile(path):
            raise HTTPException(404, f"{key}: no image with id {image_id!r} in the datastore")
        request.setdefault("_display_names", {})[path] = f"image {image_id!r}"
        return path

    def register(self, image_id: str, path: str, info: dict, sources=(), description="", rescale_type="HU") -> str:
        """Add a generated volume to the datastore; its id there.

        A DICOMweb datastore stores it on the server as a DICOM CT series in the study of ``sources`` (the DICOM
        files it was made from), and its id is the new Series Instance UID: ``image_id`` names local images only.
        """
        add_volume = getattr(self.datastore, "add_volume", None)
        if add_volume is not None:
            return add_volume(path, info, sources, description, rescale_type)
        return self.datastore.add_image(image_id, path, info)

    def run(self, request) -> tuple[str, dict]:
        raise NotImplementedError


class MaskRefinerInfer(LocalBundleTask):
    """2D mask refiner: the request image plus its coarse probability map in, the refined mask out.

    The probability map is the uploaded ``label`` file or, for a datastore image, its label saved under the tag
    ``coarse_tag`` (default ``coarse``). It is a foreground probability in [0, 1] (a 0/1 coarse mask works too),
    as NIfTI or PNG on the image's grid, or the bundle's ``.npy`` (H, W) or (2, H, W) softmax. The result is a
    label of the image's shape and affine: 1 = lesion.

    The safeguard's ``min_change`` belongs to the weights: the bundle's weights get inference.json's value; weights
    fine-tuned by the app's train task get the value that run chose on its validation images, kept next to them
    (``model.json``, :func:`lib.bundles.sidecar_path`) with the SHA-256 of the weights it was chosen for. Without
    that file, or with one for other weights or unreadable, they get inference.json's value and a warning in the
    log. The answer says which (``min_change``, ``min_change_from``: ``"bundle"`` or ``"fine-tuned validation"``).
    """

    name = "mask_refiner"
    id_params = ("coarse_tag",)
    task_type = InferType.SEGMENTATION
    labels = {"lesion": 1}
    dimension = 2
    description = "Refines a coarse 2D segmentation from its probability map (bundle mask_refiner_2d)"
    defaults = {"coarse_tag": "coarse", "threshold": MASK_THRESHOLD}

    def __init__(self, bundle_dir, datastore, device, weights):
        super().__init__(bundle_dir, datastore, device, weights)
        self.threshold = float(self.bundle_config.get("threshold", MASK_THRESHOLD))
        parser = make_parser(self.bundle_config, self.bundle_dir)
        # the value the bundle's network_def gets (RefinerUNet's default 0 where it sets none)
        self.bundle_min_change = check_min_change(parser.get_parsed_content("network_def#min_change", default=0.0))
        self._warned = None  # the last fallback warned about, so that each is logged once, not at every request

    def _min_change(self) -> tuple[float, str, str]:
        """(min_change, where it comes from, why the bundle's value stands in for fine-tuned weights or "") for the
        weights of the network :attr:`network` returned last."""
        path, digest = self.network.path, self.network.sha256
        if path == self.bundle_dir / WEIGHTS:
            return self.bundle_min_change, "bundle", ""
        sidecar = sidecar_path(path)
        if digest is None:
            why = f"{path.name} changed while it was read"
        else:
            try:
                record = json.loads(sidecar.read_text())
            except FileNotFoundError:
                why = f"there is no {sidecar.name} next to {path.name}"
            except (OSError, ValueError) as e:
                why = f"{sidecar.name} cannot be read ({type(e).__name__})"
            else:
                value, why = recorded_min_change(record, digest)
                if value is not None:
                    self._warned = None
                    return value, "fine-tuned validation", ""
                why = f"{sidecar.name}: {why}"
        why = f"fine-tuned weights served with the bundle's min_change {self.bundle_min_change:g}: {why}"
        if (self.network.sha256, why) != self._warned:
            logger.warning(f"mask_refiner: {why}")
            self._warned = (self.network.sha256, why)
        return self.bundle_min_change, "bundle", why

    def _probabilities(self, request, shape_uv) -> np.ndarray:
        path = request.get("label")
        if not path:
            image_id = request.get("image_id")
            tag = request.get("coarse_tag", "coarse")
            path = self.datastore.get_label_uri(image_id, tag) if image_id else ""
            if not path or not os.path.isfile(path):
                where = f"saved in the datastore under tag {tag!r} for image {image_id!r}" if image_id else ""
                raise HTTPException(
                    400,
                    "mask_refiner needs the coarse probability map: upload it as the label"
                    + (f", or have it {where}" if where else ""),
                )
            request.setdefault("_display_names", {})[path] = f"the {tag!r} label of image {image_id!r}"
        suffix = _suffix(path)
        try:
            if suffix == ".npy":
                probs = load_array(path).astype(np.float32)
                fg = probs[1] if probs.ndim == 3 and probs.shape[0] == 2 else probs
                fg = fg.T if fg.ndim == 2 else fg  # the bundle's .npy maps are (rows, cols)
            elif suffix in NIFTI:
                img = nib.load(path)
                fg = np.asarray(img.dataobj, dtype=np.float32)
                fg = fg.reshape([s for s in fg.shape if s != 1]) if fg.ndim > 2 else fg
            elif suffix in PLAIN_IMAGES:
                from PIL import Image

                with Image.open(path) as im:
                    raw = np.asarray(im)
                fg = raw.astype(np.float32).T
                if raw.dtype == np.uint8 and fg.max() > 1:
                    fg = fg / 255.0
                elif raw.dtype == np.uint16 and fg.max() > 1:
                    fg = fg / 65535.0
            else:
                raise InputError(f"{path}: unsupported probability map format {suffix!r} (use NIfTI, PNG or .npy)")
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{path}: not a readable probability map ({type(e).__name__}: {e})") from None
        if fg.shape != tuple(shape_uv):
            raise InputError(f"{path}: probability map of shape {fg.shape} does not match the image {tuple(shape_uv)}")
        return fg

    def run(self, request):
        path = request["image"]
        image = load_xray(path)  # (1, U, V), checks 2D, finiteness and size
        uv = np.asarray(image[0], dtype=np.float32)
        fg = self._probabilities(request, uv.shape)
        channels = make_channels(fg.T, uv.T)  # the bundle works on (rows, cols)
        net = self.network.get()
        # set at every request (under the task's lock), from the weights just returned: the value follows a replaced
        # weights file or model.json without a restart
        min_change, min_change_from, why = self._min_change()
        net.min_change = min_change
        with torch.no_grad():
            logits = net(torch.from_numpy(channels)[None].to(self.network.device))
        mask_uv = (torch.sigmoid(logits[0, 0]).cpu().numpy() > self.threshold).T.astype(np.uint8)

        suffix = _suffix(path)
        if suffix in NIFTI:
            src = nib.load(path)
            out = _temp_file(".nii.gz")
            label = nib.Nifti1Image(mask_uv.reshape(src.shape), src.affine, header=src.header)
            label.set_data_dtype(np.uint8)
            label.header.set_slope_inter(1, 0)
            nib.save(label, out)
        elif suffix in PLAIN_IMAGES:
            out = _temp_file(".png")
            save_png(mask_uv.T, out)  # PNG rows are v
        else:  # DICOM radiograph: NIfTI with the pixel spacing read from its header
            out = _temp_file(".nii.gz")
            save_nifti(mask_uv, np.asarray(image.affine), out, dtype=np.uint8, description="refined mask")
        params = {
            "label_names": dict(self.labels),
            "threshold": self.threshold,
            "foreground_pixels": int(mask_uv.sum()),
            "weights": "bundle" if self.network.path == self.bundle_dir / WEIGHTS else "fine-tuned",
            "min_change": min_change,
            "min_change_from": min_change_from,
        }
        if why:
            params["min_change_warning"] = why
        return out, params


class XRayToCTInfer(LocalBundleTask):
    """Biplanar X-ray -> CT: the request image is the frontal X-ray, params ``lateral`` the lateral one's id.

    Runs the bundle's preprocessing (``LoadXRayd`` + ``ConcatItemsd``), its network and its DDIM inferer, writes the
    mean CT in HU on the bundle's cube (``cube_mm``/``volume_size`` mm voxels, RAS) and the voxelwise standard
    deviation over the samples, and adds both to the datastore as new images (``<frontal id>_ct`` and
    ``<frontal id>_ct_uncertainty``, or ``ct_id`` from params), so viewers open them as volumes. The response's file
    is the CT. Params: ``num_inference_steps``, ``num_samples``, ``seed`` (stage 1's sampling) and ``stages``
    (``"1"``, ``"1-2"`` or ``"1-3"``; empty: the bundle's own ``stages`` setting), which chains the cascade's
    super-resolution stages: ``"1-3"`` returns the 256^3 CT of stage 3 (1.25 mm voxels), each later stage sampled
    with its own settings from the bundle's ``stage2``/``stage3``.
    """

    name = "xray2ct"
    id_params = ("lateral", "ct_id")
    dimension = 2
    description = "Reconstructs a CT (HU) from a frontal and a lateral X-ray (bundle xray2ct_cascade_diffusion)"
    defaults = {"lateral": "", "num_inference_steps": 0, "num_samples": 0, "seed": 0, "stages": ""}

    # on a DICOMweb datastore the task finds its input files itself: the request may name a study (lib/dicomweb.py)
    picks_own_images = True

    def __init__(self, bundle_dir, datastore, device, weights):
        super().__init__(bundle_dir, datastore, device, weights)
        self.stage_networks = CachedStageNetworks(self.network.device)

    def run(self, request):
        frontal_id = request.get("image_id") or "uploaded"
        ct_id = check_id(request.get("ct_id") or f"{frontal_id}_ct", "ct_id")
        check_id(f"{ct_id}_uncertainty", "the uncertainty map's id (ct_id + '_uncertainty')")
        stages = self._stages(request)  # before any file is read: a bad value costs nothing
        pick_views = getattr(self.datastore, "pick_views", None)
        views = None
        if pick_views is not None:  # radiographs on a DICOMweb server, downloaded as DICOM with every tag
            views = pick_views(request.get("image_id"), request.get("lateral"), request.get("image") or None)
            frontal, lateral = views.frontal.path, views.lateral.path
            for key, picked in (("frontal", views.frontal), ("lateral", views.lateral)):
                if picked.series_uid:
                    request.setdefault("_display_names", {})[picked.path] = f"the {key} X-ray {picked.describe()}"
        else:
            frontal = request["image"]
            lateral = self.resolve_id(request, "lateral", "lateral X-ray")
        for key, path in (("frontal", frontal), ("lateral", lateral)):
            load_xray(path)  # a clear error for a corrupt or 3D file before the bundle's transforms wrap it
        cfg = self.bundle_config
        overrides = {"inferer#progress": False, "stages": stages}
        for key, hi in (("num_inference_steps", 1000), ("num_samples", 64)):
            default = int(cfg.get(key, 1))
            value = request.get(key) or default  # 0 (the advertised config value) means the bundle's setting
            overrides[key] = _int_param({key: value}, key, default, 1, hi)
        overrides["seed"] = _int_param(request, "seed", int(cfg.get("seed", 0)), 0, 2**31 - 1)
        parser = make_parser(cfg, self.bundle_dir, overrides)
        preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
        inferer = self.cascade(parser, stages)
        window = [float(w) for w in parser.get_parsed_content("window")]
        cube_mm = float(parser.get_parsed_content("cube_mm"))

        data = preprocessing({"frontal": frontal, "lateral": lateral})
        inputs = intake_record(data, files=False)
        xray = torch.as_tensor(data["xray"]).float()[None].to(self.network.device)
        net = self.network.get()
        with torch.no_grad():
            pred = inferer(xray, net)
        pred = pred[0, 0].float().cpu()
        d = pred.shape[-1]
        hu = window_to_hu(pred, window)
        std = inferer.last_std[0, 0].float().cpu() * (window[1] - window[0]) / 2
        affine = cube_affine(d, cube_mm)

        lo, hi = window
        with tempfile.TemporaryDirectory() as tmp:
            ct_path, unc_path = os.path.join(tmp, "ct.nii.gz"), os.path.join(tmp, "uncertainty.nii.gz")
            save_nifti(hu.numpy(), affine, ct_path, description=f"CT HU clipped to [{lo:g},{hi:g}]")
            save_nifti(std.numpy(), affine, unc_path, description="sample std, HU")
            info = {
                "generated_by": self.name,
                "frontal": frontal_id,
                "lateral": request.get("lateral") or "",
                "units": "HU",
                "window": window,
                "num_inference_steps": overrides["num_inference_steps"],
                "num_samples": overrides["num_samples"],
                "seed": overrides["seed"],
                "stages": stages,
                "warnings": inputs["warnings"],
            }
            if views is not None:
                info.update(views.info())
            sources = (frontal, lateral)  # their patient and study, for a DICOMweb datastore
            ct_id = self.register(ct_id, ct_path, dict(info), sources, "xray2ct CT (HU), research only")
            unc_info = dict(info, units="HU (standard deviation)")
            unc_id = self.register(
                f"{ct_id}_uncertainty", unc_path, unc_info, sources, "xray2ct uncertainty (HU std), research only", "US"
            )
            out = _temp_file(".nii.gz")
            os.replace(ct_path, out)
        params = {
            "ct_image_id": ct_id,
            "uncertainty_image_id": unc_id,
            "units": "HU",
            "window": window,
            "clipping": f"values are clipped to [{lo:g}, {hi:g}] HU",
            "voxel_spacing_mm": cube_mm / d,
            "shape": [d, d, d],
            "num_inference_steps": overrides["num_inference_steps"],
            "num_samples": overrides["num_samples"],
            "seed": overrides["seed"],
            "stages": stages,
            "inputs": inputs,
        }
        if len(getattr(inferer, "outputs", [])) > 1:  # a chain: the shape of each stage's CT
            params["stage_shapes"] = [[int(s) for s in out.shape[-3:]] for out in inferer.outputs]
        if views is not None:
            params.update(views.info())
            params["study_instance_uid"] = self.datastore.dicom_study(sources).attributes.get("StudyInstanceUID", "")
        return out, params

    def cascade(self, parser, stages: str):
        """The bundle's ``cascade`` for this request (stage 1's inferer alone, or the chain ``stages`` asks for), with
        the later stages' networks from :attr:`stage_networks`: their weights are read once, not on every request.
        The samplers are new per request (they take its seed)."""
        return build_cascade(
            parser.get_parsed_content("cascade#first", instantiate=True),
            int(parser.get_parsed_content("cascade#first_xray_size")),
            parser.get_parsed_content("cascade#later", instantiate=True),
            stages,
            load_network=self.stage_networks.get,
        )

    def _stages(self, request) -> str:
        """The cascade stages to run, ``"1"``, ``"1-2"`` or ``"1-3"``: the request's ``stages`` or the bundle's own
        setting. 400 for a value :func:`parse_stages` refuses, or for a stage whose weights the bundle lacks (before
        any file is read; the message names the file inside the bundle, never a server path)."""
        later = self.bundle_config.get("cascade", {}).get("later", [])
        value = request.get("stages")
        value = self.bundle_config.get("stages", "1") if value in (None, "") else value
        try:
            numbers = parse_stages(value, 1 + len(later))
        except InputError as e:
            raise HTTPException(400, str(e)) from None
        stages = "1" if numbers == [1] else f"1-{numbers[-1]}"
        parser = make_parser(self.bundle_config, self.bundle_dir)
        for number in numbers[1:]:
            ckpt = Path(parser.get_parsed_content(f"stage{number}#ckpt_path"))
            if not ckpt.is_file():
                try:
                    where = ckpt.resolve().relative_to(self.bundle_dir.resolve()).as_posix()
                except ValueError:
                    where = f"stage{number}#ckpt_path"
                earlier = "'1'" if number == 2 else f"'1' to '1-{number - 1}'"
                raise HTTPException(
                    400,
                    f"stages {stages!r} needs the weights of stage {number} ({where}), which the bundle "
                    f"{self.bundle_dir.name} on this server does not have; ask for stages {earlier}",
                )
        return stages


class CTDetailInfer(LocalBundleTask):
    """CT detail refinement: a CT in HU in, the refined CT in HU out, over the input's field of view.

    The bundle interface used: ``configs/inference.json`` with ``network_def`` (a 3D network, one channel in and
    out, in window units), optionally ``window`` (default [-200, 200] HU) and ``inferer`` (default: the network
    applied to the whole volume), and ``models/model.pt``. A network that upsamples by whole factors gets the
    matching finer affine over the same field of view (:func:`output_affine`). The refined CT is added to the
    datastore as ``<image id>_refined`` (or ``refined_id`` from params).

    A bundle trained on a fixed grid declares it with ``volume_size``, ``scale_factor`` and ``cube_mm`` (the
    project's ct_detail_refinement does): its input is a ``volume_size // scale_factor``^3 grid over a ``cube_mm``
    cube. A CT on any other grid (a clinical scan: 512 x 512 x 300 at 0.7 x 0.7 x 1 mm) is first resampled onto
    that grid around its own centre (:func:`custom.core.transforms.preprocess_ct`), so the network sees what it
    was trained on and the result still overlays the input in the viewer.
    """

    name = "ct_refiner"
    id_params = ("refined_id",)
    description = "Refines the details of a CT in HU (bundle ct_detail_refinement)"
    defaults = {"refined_id": ""}

    def run(self, request):
        refined_id = check_id(
            request.get("refined_id") or f"{request.get('image_id') or 'uploaded'}_refined", "refined_id"
        )
        ct = load_ct(request["image"])  # (1, X, Y, Z) HU; 2D files, non-HU data and corrupt files are refused
        parser = make_parser(self.bundle_config, self.bundle_dir)
        window = [float(w) for w in (parser.get_parsed_content("window") if "window" in parser else (-200, 200))]
        if all(k in parser for k in ("volume_size", "scale_factor", "cube_mm")):
            size = int(parser.get_parsed_content("volume_size")) // int(parser.get_parsed_content("scale_factor"))
            ct = preprocess_ct(ct, size, float(parser.get_parsed_content("cube_mm")))
        inferer = parser.get_parsed_content("inferer", instantiate=True) if "inferer" in parser else None
        x = hu_to_window(torch.as_tensor(ct).float(), window)[None].to(self.network.device)
        net = self.network.get()
        with torch.no_grad():
            y = inferer(x, net) if inferer is not None else net(x)
        y = torch.as_tensor(y).float().cpu()
        hu = window_to_hu(y[0, 0], window).numpy()
        affine = output_affine(np.asarray(ct.affine, dtype=np.float64), x.shape[2:], y.shape)

        lo, hi = window
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "refined.nii.gz")
            save_nifti(hu, affine, path, description=f"refined CT, HU clipped to [{lo:g},{hi:g}]")
            info = {"generated_by": self.name, "source": request.get("image_id") or "uploaded", "units": "HU"}
            series_files = getattr(self.datastore, "series_files", None)  # DICOMweb: the source CT's own files
            sources = series_files(request["image_id"]) if series_files and request.get("image_id") else ()
            refined_id = self.register(refined_id, path, info, sources, "refined CT (HU), research only")
            out = _temp_file(".nii.gz")
            os.replace(path, out)
        return out, {"refined_image_id": refined_id, "units": "HU", "window": window, "shape": list(hu.shape)}
