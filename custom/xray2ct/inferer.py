"""DDIM sampling as a MONAI ``Inferer``, so ``SupervisedEvaluator`` and bundle configs can sample CTs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from monai.inferers import Inferer

from custom.core.bundle.errors import bundle_check
from custom.xray2ct.ddim import DDIMSampler
from custom.xray2ct.schedule import cosine_alpha_bar


class DDIMInferer(Inferer):
    """MONAI inferer that samples CTs with DDIM: ``inferer(xray, network, prev=...)`` -> (B, 1, D, D, D).

    Args:
        volume_size: D.
        num_train_timesteps: T of the training schedule.
        num_inference_steps: DDIM steps.
        eta: DDIM eta.
        num_samples: samples per case; the output is their mean, and ``last_std`` holds the voxelwise standard
            deviation (uncertainty) of the last call.
        seed: seed of the sampling noise (None: not reproducible).
        clip_x0: clamp of the predicted x0.
        guidance: optional callable ``(x0, xray) -> loss`` for physics guidance, with ``guidance_scale``.
        progress: show a progress bar.
        roi_size: side of the tiles a sub-volume network (:class:`custom.xray2ct.patch_network.PatchDenoiser`) is
            run on at each step, with MONAI's sliding-window blending; None or at least D: the whole volume at once.
        overlap: overlap of neighbouring tiles (fraction of ``roi_size``); tiles are blended with Gaussian weights.
        sw_batch_size: tiles run through the network at once (more uses more memory and keeps a GPU busier).
        start_strength: for a super-resolution stage, where sampling starts: 1 from pure noise, less from the
            previous stage's upsampled output noised to that fraction of the schedule (see
            :class:`custom.xray2ct.ddim.DDIMSampler`); the steps are spread over that part of the schedule.
    """

    def __init__(
        self,
        volume_size: int,
        num_train_timesteps: int = 1000,
        num_inference_steps: int = 25,
        eta: float = 0.0,
        num_samples: int = 1,
        seed: int | None = 0,
        clip_x0: Sequence[float] = (-1.5, 1.5),
        guidance=None,
        guidance_scale: float = 0.0,
        progress: bool = False,
        roi_size: int | None = None,
        overlap: float = 0.25,
        sw_batch_size: int = 1,
        start_strength: float = 1.0,
    ):
        super().__init__()
        self.roi_size = int(roi_size) if roi_size else None
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.volume_size = int(volume_size)
        self.sampler = DDIMSampler(
            cosine_alpha_bar(num_train_timesteps), num_inference_steps, eta, clip_x0, strength=start_strength
        )
        self.num_samples = int(num_samples)
        self.seed = seed
        self.guidance, self.guidance_scale = guidance, float(guidance_scale)
        self.progress = progress
        self.last_std: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        b, d, k = inputs.shape[0], self.volume_size, self.num_samples
        gen = torch.Generator(device=inputs.device).manual_seed(int(self.seed)) if self.seed is not None else None
        cond = {"xrays": inputs.repeat_interleave(k, dim=0)}
        if kwargs.get("prev") is not None:
            cond["prev"] = kwargs["prev"].repeat_interleave(k, dim=0)
        guidance = None
        if self.guidance is not None and self.guidance_scale > 0:
            guidance = lambda x0: self.guidance(x0, cond["xrays"])  # noqa: E731
        x_init = cond.get("prev")
        if hasattr(network, "lift_xrays"):
            network, cond = self._tiled(network, cond, d), {}
        x = self.sampler.sample(
            network,
            (b * k, 1, d, d, d),
            cond,
            gen,
            inputs.device,
            guidance,
            self.guidance_scale,
            self.progress,
            x_init=x_init,
        )
        x = x.view(b, k, 1, d, d, d)
        self.last_std = x.std(dim=1) if k > 1 else torch.zeros_like(x[:, 0])
        return x.mean(dim=1)

    def _tiled(self, network, cond: dict, d: int):
        """v(x_t, t) of a sub-volume network over the whole volume: the X-ray features lifted once per call, then
        the network on tiles of ``roi_size`` blended by MONAI's sliding window (or on the whole volume)."""
        from monai.inferers import sliding_window_inference

        from custom.xray2ct.patch_network import cube_coordinates

        xrays, prev = cond["xrays"], cond.get("prev")
        if prev is None:
            raise ValueError("a super-resolution stage needs prev, the previous stage's output upsampled to D")
        with torch.no_grad():
            lifted = network.lift_xrays(xrays)
        coords = cube_coordinates(d, device=xrays.device)[None]
        roi = self.roi_size if self.roi_size and self.roi_size < d else None

        def v(x_t, t01):
            out = []
            for i in range(x_t.shape[0]):  # one case at a time: each tile must see its own case's X-rays

                def predictor(tile, i=i):
                    n = tile.shape[0]
                    cond_i = (xrays[i : i + 1].expand(n, -1, -1, -1), lifted[i : i + 1].expand(n, -1, -1, -1, -1))
                    return network(
                        tile[:, :1], t01[i : i + 1].expand(n), cond_i[0], tile[:, 1:2], tile[:, 2:5], cond_i[1]
                    )

                tiles = torch.cat([x_t[i : i + 1], prev[i : i + 1], coords], dim=1)
                if roi is None:
                    out.append(predictor(tiles))
                else:
                    out.append(
                        sliding_window_inference(
                            tiles,
                            (roi,) * 3,
                            self.sw_batch_size,
                            predictor,
                            overlap=self.overlap,
                            mode="gaussian",
                            progress=False,
                        )
                    )
            return torch.cat(out)

        return v


def parse_stages(stages, available: int = 3) -> list[int]:
    """``"1"``, ``"1-2"``, ``"1-3"`` (or an int) -> the stage numbers to run, always starting at stage 1."""
    from custom.core.errors import InputError

    text = str(stages).strip()
    last = text.split("-")[-1] if text.startswith("1") else ""
    if not last.isdigit() or not 1 <= int(last) <= available or text not in ("1", f"1-{last}"):
        choices = ", ".join(["1"] + [f"1-{n}" for n in range(2, available + 1)])
        raise InputError(f"stages must be one of {choices} (the cascade always starts from the X-rays), got {stages!r}")
    return list(range(1, int(last) + 1))


class CascadeInferer(Inferer):
    """The whole cascade as one MONAI inferer: stage 1 samples a coarse CT from the X-rays, each later stage samples
    at its own resolution conditioned on the previous stage's sampled output (trilinearly upsampled) and on the
    X-rays resized to its own size.

    Args:
        stages: one dict per stage, in order: ``network`` (the stage's denoiser; stage 1 may be None to use the
            network the evaluator passes in), ``inferer`` (its :class:`DDIMInferer`) and ``xray_size``.
        run: which stages run, ``"1"``, ``"1-2"`` or ``"1-3"``.

    After a call, ``outputs`` holds each stage's mean CT (window units), ``seconds`` each stage's wall time and
    ``last_std`` the spread of the last stage that drew several samples (``std_stage``), upsampled to the final grid:
    a stage drawing one sample has no spread of its own. ``on_stage_end(number, stage, seconds)``, when set, is
    called after each stage (the benchmark reads memory there).
    """

    def __init__(self, stages, run="1-3"):
        super().__init__()
        self.stages = list(stages)
        self.run = parse_stages(run, len(self.stages))
        self.outputs: list[torch.Tensor] = []
        self.seconds: list[float] = []
        self.last_std: torch.Tensor | None = None
        self.std_stage = 0
        self.on_stage_end = None

    def __call__(self, inputs: torch.Tensor, network=None, *args, **kwargs) -> torch.Tensor:
        import time

        import torch.nn.functional as F

        prev, self.outputs, self.seconds, self.last_std, self.std_stage = None, [], [], None, 0
        for number in self.run:
            start = time.perf_counter()
            stage = self.stages[number - 1]
            net = stage.get("network") or network
            n = int(stage["xray_size"])
            xrays = inputs if inputs.shape[-1] == n else F.interpolate(inputs, size=(n, n), mode="area")
            inferer = stage["inferer"]
            if prev is not None:
                size = (inferer.volume_size,) * 3
                prev = F.interpolate(prev, size=size, mode="trilinear", align_corners=False)
            prev = inferer(xrays, net, prev=prev)
            if prev.is_cuda:
                torch.cuda.synchronize(prev.device)  # the time of the work, not of its launch
            self.outputs.append(prev)
            self.seconds.append(time.perf_counter() - start)
            if inferer.num_samples > 1 or self.last_std is None:
                self.last_std, self.std_stage = inferer.last_std, number
            elif self.last_std.shape[-1] != prev.shape[-1]:
                # a stage that draws one sample has no spread of its own: carry the last measured one onto its grid
                self.last_std = F.interpolate(
                    self.last_std, size=prev.shape[-3:], mode="trilinear", align_corners=False
                )
            if self.on_stage_end is not None:
                self.on_stage_end(number, stage, self.seconds[-1])
        return prev


@bundle_check
def load_stage_network(number: int, network: dict, ckpt, device="cpu") -> torch.nn.Module:
    """Stage ``number``'s :class:`custom.xray2ct.patch_network.PatchDenoiser` (``network``: its keyword arguments)
    with the weights in ``ckpt`` loaded strictly, on ``device`` in eval mode."""
    from custom.core.bundle import load_weights
    from custom.core.errors import InputError
    from custom.xray2ct.patch_network import PatchDenoiser

    if not Path(ckpt).is_file():
        raise InputError(
            f"stage {number} has no weights at {ckpt}; run stages 1 (the default), set stage{number}#ckpt_path to "
            f"trained weights, or train stage {number} (see the model card)"
        )
    net = load_weights(PatchDenoiser(**network), ckpt, f"; stage{number}#network must match its weights")
    return net.to(device).eval()


@bundle_check
def build_cascade(first: DDIMInferer, first_xray_size: int, later, run="1", device="cpu", load_network=None):
    """The inferer of an inference run: stage 1's own :class:`DDIMInferer` when only stage 1 runs (exactly the
    one-stage path), else a :class:`CascadeInferer` whose later stages are built from their settings.

    ``later``: one dict per later stage (2, 3) with ``network`` (keyword arguments of
    :class:`custom.xray2ct.patch_network.PatchDenoiser`), ``ckpt_path``, ``xray_size``, ``num_inference_steps``,
    ``num_samples``, ``roi_size``, ``overlap`` and ``sw_batch_size``. Only the stages that run are built, and each
    one's weights must load strictly. ``load_network(number, network, ckpt_path)`` gives a stage's network
    (default :func:`load_stage_network` on ``device``; a server passes one that keeps networks between requests).
    """
    from custom.core.options import as_float

    numbers = parse_stages(run, 1 + len(later))
    if numbers == [1]:
        return first
    load_network = load_network or (lambda number, network, ckpt: load_stage_network(number, network, ckpt, device))
    stages = [{"network": None, "inferer": first, "xray_size": int(first_xray_size)}]
    for number in numbers[1:]:
        s = dict(later[number - 2])
        net = load_network(number, s["network"], str(s["ckpt_path"]))
        inferer = DDIMInferer(
            s["network"]["volume_size"],
            first.sampler.num_train_timesteps,
            int(s["num_inference_steps"]),
            num_samples=int(s.get("num_samples", 1)),
            seed=first.seed,
            progress=first.progress,
            roi_size=s.get("roi_size"),
            overlap=float(s.get("overlap", 0.25)),
            sw_batch_size=int(s.get("sw_batch_size", 1)),
            start_strength=as_float(
                s.get("start_strength", 1.0),
                f"stage{number}#start_strength",
                maximum=1.0,
                above=0.0,
                hint=" (1 starts from noise, less from the previous stage's output)",
            ),
        )
        stages.append({"network": net, "inferer": inferer, "xray_size": int(s["xray_size"])})
    return CascadeInferer(stages, run)


@bundle_check
def input_xray_size(first_xray_size: int, later, run="1") -> int:
    """Side of the X-rays to load: that of the last stage that runs (earlier stages shrink them to their own)."""
    numbers = parse_stages(run, 1 + len(later))
    return int(first_xray_size) if numbers[-1] == 1 else int(later[numbers[-1] - 2]["xray_size"])
