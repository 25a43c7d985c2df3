"""DDIM sampling as a MONAI ``Inferer``, so ``SupervisedEvaluator`` and bundle configs can sample CTs."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.inferers import Inferer

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
    ):
        super().__init__()
        self.volume_size = int(volume_size)
        self.sampler = DDIMSampler(cosine_alpha_bar(num_train_timesteps), num_inference_steps, eta, clip_x0)
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
        x = self.sampler.sample(
            network, (b * k, 1, d, d, d), cond, gen, inputs.device, guidance, self.guidance_scale, self.progress
        )
        x = x.view(b, k, 1, d, d, d)
        self.last_std = x.std(dim=1) if k > 1 else torch.zeros_like(x[:, 0])
        return x.mean(dim=1)
