"""Coarse CT inputs for the detail refiners: degraded ground truth, the frozen cascade stage's output, or a file.

All three are MONAI dictionary transforms on (1, S, S, S) CTs in window units ([-1, 1]) and write the coarse CT under
``output_key``:

* :class:`DegradeCTd` trains the refiner alone: average the ground truth down by ``downsample`` ("area"), blur it
  (Gaussian, sigma in low-resolution voxels), add Gaussian noise, clip to the window and, when ``output_size`` is
  set, interpolate back up (trilinear). Random (seeded by MONAI's ``set_determinism`` / ``set_random_state``) for
  training; ``deterministic=True`` gives every call the same blur and noise draw, for validation and tests.
* :class:`CascadeCoarsed` runs the frozen cascade denoiser (``custom.xray2ct.network.CascadeDenoiser``, DDIM) on the
  case's two X-rays. It is deterministic, so a ``CacheDataset`` computes it once per case.
* :class:`LoadCoarseCTd` reads a coarse CT from a file in HU: a cascade output written once by the cascade
  bundle's ``inference.json`` (much faster than sampling it again in every run), or any CT a user wants refined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, MapTransform, Randomizable, Resize

from custom.core.cases import file_case_name
from custom.core.ct import load_ct
from custom.core.errors import InputError
from custom.core.transforms import hu_to_window, preprocess_ct


def _skip_missing(transform: MapTransform, data: dict, what: str) -> bool:
    """True when the transform's key is absent and may be; an error naming ``what`` when it may not."""
    if transform.keys[0] in data:
        return False
    if transform.allow_missing_keys:
        return True
    raise InputError(f"no {what} under {transform.keys[0]!r}")


def _as_range(value, name: str) -> tuple[float, float]:
    lo, hi = (float(value), float(value)) if np.isscalar(value) else (float(value[0]), float(value[1]))
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} must be a non-negative number or a [low, high] range, got {value}")
    return lo, hi


class DegradeCTd(Randomizable, MapTransform):
    """Make a coarse CT from the ground truth: downsample + blur + noise (+ upsample back).

    Args:
        keys: the ground-truth CT key (one key).
        output_key: key of the coarse CT.
        downsample: integer factor of the area downsampling (4 for the super-resolution refiner: 256^3 -> 64^3).
        output_size: side the coarse CT is interpolated back to (None: stay at S / downsample; the detail refiner
            uses S).
        blur_sigma: Gaussian sigma in low-resolution voxels, a number or a [low, high] range drawn per call.
        noise_std: standard deviation of the added Gaussian noise (window units), number or range.
        deterministic: same blur and noise draw for every call (seeded with ``seed``).
        seed: seed of the deterministic mode.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        output_key: str = "image",
        downsample: int = 2,
        output_size: int | None = None,
        blur_sigma: float | Sequence[float] = (0.6, 1.2),
        noise_std: float | Sequence[float] = (0.0, 0.03),
        deterministic: bool = False,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"DegradeCTd degrades one ground-truth key, got {self.keys}")
        if int(downsample) < 1:
            raise ValueError(f"downsample must be a positive integer, got {downsample}")
        self.output_key, self.downsample = output_key, int(downsample)
        self.output_size = None if output_size in (None, 0) else int(output_size)
        self.blur_sigma, self.noise_std = _as_range(blur_sigma, "blur_sigma"), _as_range(noise_std, "noise_std")
        self.deterministic, self.seed = bool(deterministic), int(seed)
        self._sigma, self._std, self._noise_seed = self.blur_sigma[0], self.noise_std[0], 0

    def randomize(self, data=None) -> None:
        rng = np.random.RandomState(self.seed) if self.deterministic else self.R
        self._sigma = float(rng.uniform(*self.blur_sigma))
        self._std = float(rng.uniform(*self.noise_std))
        self._noise_seed = int(rng.randint(0, 2**31 - 1))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        key = self.keys[0]
        if _skip_missing(self, d, "a ground-truth CT to degrade into a coarse input"):
            return d
        ct = torch.as_tensor(d[key]).float()
        if ct.ndim != 4 or len(set(ct.shape[1:])) != 1 or ct.shape[-1] % self.downsample:
            raise ValueError(
                f"{key} must be a (1, S, S, S) cube with S divisible by {self.downsample}, got {tuple(ct.shape)}"
            )
        self.randomize()
        low = ct.shape[-1] // self.downsample
        x = torch.as_tensor(Resize((low,) * 3, mode="area")(ct)) if self.downsample > 1 else ct.clone()
        if self._sigma > 0:
            x = torch.as_tensor(GaussianSmooth(sigma=self._sigma)(x))
        if self._std > 0:
            gen = torch.Generator().manual_seed(self._noise_seed)
            x = x + self._std * torch.randn(x.shape, generator=gen)
        x = x.clamp(-1.0, 1.0)
        if self.output_size is not None and self.output_size != low:
            x = torch.as_tensor(Resize((self.output_size,) * 3, mode="trilinear")(x))
        d[self.output_key] = x.float()
        return d


class CascadeCoarsed(MapTransform):
    """Coarse CT from the frozen cascade stage: DDIM-sample ``CascadeDenoiser`` on the case's X-rays.

    Args:
        keys: the X-ray key, a (V, N, N) tensor in network-input units (line integral / 8).
        checkpoint: the cascade checkpoint: a plain state dict or a dict with a ``model`` state dict.
        network: keyword arguments of ``custom.xray2ct.network.CascadeDenoiser`` instead of the bundle's (for weights
            of another architecture; stage 1, ``use_prev`` false).
        bundle: the cascade bundle folder; its ``configs/inference.json`` ``network_def`` defines the network, so
            the refiner never repeats the cascade's sizes.
        output_key: key of the coarse CT, (1, D, D, D) in window units.
        output_size: side to interpolate the cascade's output to (None: the cascade's ``volume_size``).
        num_inference_steps, num_train_timesteps, seed: the DDIM sampling (seeded: the same X-rays always give
            the same coarse CT).
        num_samples: samples averaged into the coarse CT (the cascade bundle's inference averages 4).
        device: where the frozen network runs.
    """

    def __init__(
        self,
        keys: KeysCollection = "xray",
        checkpoint: str = "",
        network: dict | None = None,
        bundle: str = "",
        output_key: str = "image",
        output_size: int | None = None,
        num_inference_steps: int = 25,
        num_train_timesteps: int = 1000,
        seed: int = 0,
        num_samples: int = 1,
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"cascade checkpoint {checkpoint!r} not found: set cascade_checkpoint to the cascade bundle's "
                "models/model.pt, or use coarse_source 'degrade' to train the refiner alone"
            )
        if not network and not (Path(bundle) / "configs" / "inference.json").is_file():
            raise InputError(
                f"cascade bundle {bundle!r} not found: set cascade_bundle to the xray2ct_cascade_diffusion bundle "
                "folder (its configs define the network), or cascade_network to the network's settings"
            )
        self.checkpoint, self.bundle, self.network_args = str(checkpoint), str(bundle), dict(network or {})
        self.output_key = output_key
        self.output_size = None if output_size in (None, 0) else int(output_size)
        self.steps, self.timesteps, self.seed = int(num_inference_steps), int(num_train_timesteps), int(seed)
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        self._net = None
        self._inferer = None

    def _load(self):
        from custom.core.bundle import load_weights, make_parser, read_bundle_config
        from custom.xray2ct.inferer import DDIMInferer
        from custom.xray2ct.network import CascadeDenoiser

        if self.network_args:
            net = CascadeDenoiser(**self.network_args)
        else:
            net = make_parser(read_bundle_config(self.bundle), self.bundle).get_parsed_content("network_def")
        if net.use_prev:
            raise ValueError("the coarse input comes from stage 1 of the cascade: set use_prev false")
        load_weights(net, self.checkpoint)
        self._net = net.to(self.device).eval().requires_grad_(False)
        self._inferer = DDIMInferer(
            net.volume_size, self.timesteps, self.steps, num_samples=self.num_samples, seed=self.seed
        )

    @torch.no_grad()
    def __call__(self, data: dict) -> dict:
        d = dict(data)
        key = self.keys[0]
        if _skip_missing(self, d, "the X-rays for the cascade stage"):
            return d
        if self._net is None:
            self._load()
        xray = torch.as_tensor(d[key]).float()[None].to(self.device)
        out = self._inferer(xray, self._net)[0].clamp(-1.0, 1.0).cpu()
        if self.output_size is not None and self.output_size != out.shape[-1]:
            # shrinking averages ("area"), as LoadCoarseCTd does with the same cascade output read from a file
            mode = "area" if self.output_size < out.shape[-1] else "trilinear"
            out = torch.as_tensor(Resize((self.output_size,) * 3, mode=mode)(out))
        # a MetaTensor like the loaded ground truth it is concatenated with (MONAI concatenates one type only)
        d[self.output_key] = MetaTensor(out.float())
        return d


COARSE_SOURCES = ("degrade", "cascade", "file")


def coarse_input(source: str, degrade: dict | None = None, cascade: dict | None = None, file: dict | None = None):
    """The transform that makes the refiner's coarse input (key ``image``) from the chosen ``source``.

    ``degrade``: the ground truth blurred, noised and shrunk (:class:`DegradeCTd`); ``cascade``: the frozen cascade
    stage sampled on the case's X-rays (:class:`CascadeCoarsed`); ``file``: a CT read from a file
    (:class:`LoadCoarseCTd`). Each of the three dicts holds the keyword arguments of its transform; only the chosen
    one is built, so a missing cascade checkpoint does not matter when the coarse CTs come from files.
    """
    if source not in COARSE_SOURCES:
        raise InputError(f"coarse_source must be one of {list(COARSE_SOURCES)}, got {source!r}")
    kinds = {"degrade": (DegradeCTd, degrade), "cascade": (CascadeCoarsed, cascade), "file": (LoadCoarseCTd, file)}
    kind, options = kinds[source]
    return kind(**(options or {}))


class LoadCoarseCTd(MapTransform):
    """Coarse CT from a file: load it (NIfTI or a DICOM series folder, in HU), put it on the refiner's grid, window it.

    Whatever its grid, the CT is resampled onto a ``size``^3 grid over a ``cube_mm`` cube around its own centre,
    the grid the refiners and the cascade work on (:func:`custom.core.transforms.preprocess_ct`); a file already
    on such a grid, like the cascade bundle's ``ct.nii.gz``, is taken as it is. The output is (1, S, S, S) in
    window units under ``output_key``, and its affine (4, 4) under ``affine_key``, so that the refined CT is
    written where the input lies (:class:`custom.ct_refinement.writer.RefinementWriter`).

    Args:
        keys: the key holding the coarse CT's path (one key).
        output_key: key of the coarse CT tensor.
        size: S, voxels per side of the refiner's coarse input.
        cube_mm: side of the cube, mm.
        window: HU window mapped to [-1, 1].
        coarse_dir: where to look when an item has no path under ``keys``: ``coarse_dir/<case_id>/<filename>``
            (the layout the cascade bundle's ``inference.json --output_dir coarse_dir`` writes).
        filename: the file name inside each case folder of ``coarse_dir``.
        iso_spacing: spacing (mm) a CT off the grid is resampled to before it is resized.
        series_uid: the DICOM series to read when a folder holds several.
        affine_key: key of the coarse CT's affine.
    """

    def __init__(
        self,
        keys: KeysCollection = "coarse",
        output_key: str = "image",
        size: int = 64,
        cube_mm: float = 320.0,
        window: Sequence[float] = (-200.0, 200.0),
        coarse_dir: str = "",
        filename: str = "ct.nii.gz",
        iso_spacing: float = 1.0,
        series_uid: str | None = None,
        affine_key: str = "coarse_affine",
    ):
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"LoadCoarseCTd reads one path key, got {self.keys}")
        self.output_key, self.size, self.cube_mm = output_key, int(size), float(cube_mm)
        self.window, self.iso_spacing = tuple(float(w) for w in window), float(iso_spacing)
        self.coarse_dir, self.filename = str(coarse_dir or ""), str(filename)
        self.series_uid, self.affine_key = series_uid or None, affine_key

    def _path(self, d: dict) -> Path:
        given = d.get(self.keys[0])
        if given not in (None, ""):
            return Path(str(given))
        case = d.get("case_id")
        if not self.coarse_dir or not case:
            raise InputError(
                f"no coarse CT: give its path under {self.keys[0]!r} (inference: --coarse_path FILE), or set "
                "coarse_dir to a folder of <case_id>/" + self.filename
            )
        path = Path(self.coarse_dir) / str(case) / self.filename
        if not path.is_file():
            raise InputError(
                f"no coarse CT for case {case!r} in coarse_dir (expected <coarse_dir>/{case}/{self.filename}); write "
                "them with the cascade bundle's inference.json --output_dir <coarse_dir>, or set coarse_source to "
                "'cascade' or 'degrade'"
            )
        return path

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        path = self._path(d)
        ct = preprocess_ct(load_ct(path, self.series_uid), self.size, self.cube_mm, self.iso_spacing)
        d[self.output_key] = hu_to_window(ct.float(), self.window)  # a MetaTensor, like the loaded ground truth
        d[self.affine_key] = torch.as_tensor(np.asarray(ct.affine), dtype=torch.float64)
        d.setdefault("case_id", file_case_name(path))
        return d


def check_refiner_inputs(refiner: str, coarse_path: str = "", frontal_path: str = "", lateral_path: str = "") -> None:
    """Refuse an inference request from files that cannot run, before any file is read or written.

    The detail refiner (``refiner`` 'detail', or the deprecated variant 'b') refines with the two X-rays, so a
    coarse CT given by path needs both views next to it (NIfTI line-integral DRRs, as ``python -m custom prepare``
    and ``drr`` write them); one view alone is refused for every refiner.
    """
    if bool(frontal_path) != bool(lateral_path):
        raise InputError("give both --frontal_path and --lateral_path, or neither")
    if coarse_path and str(refiner).lower() in ("b", "detail") and not frontal_path:
        raise InputError(
            "the detail refiner refines with the two X-rays: give --frontal_path and --lateral_path (NIfTI DRRs) "
            "next to --coarse_path, or use a super-resolution refiner (configs/inference.json alone, or with "
            "inference_super_resolution.json), which needs only the coarse CT"
        )


def file_inputs(coarse_path: str = "", frontal_path: str = "", lateral_path: str = "") -> list[dict]:
    """The one-case data list of an inference run from files, named after the coarse CT (or the frontal X-ray):
    its file name, or its folder's for generic names like ``<case>/ct.nii.gz``."""
    item = {k: str(v) for k, v in (("coarse", coarse_path), ("frontal", frontal_path), ("lateral", lateral_path)) if v}
    if not item:
        raise InputError("no input files: give --coarse_path, or --frontal_path and --lateral_path")
    item["case_id"] = file_case_name(Path(coarse_path or frontal_path))
    return [item]
