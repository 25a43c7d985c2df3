"""DDIM sampling (Song et al. 2021) for a v-predicting network, with optional physics guidance.

One step from timestep ``t`` to the previous timestep ``s`` of the sampling list (``a_s = 1`` after the last):

1. ``x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v``, clamped to ``clip_x0`` (the data range [-1, 1] with a margin: a looser
   clamp leaves ``x0`` far outside the range of real CTs).
2. optional guidance: ``x0 <- x0 - guidance_scale * grad_x0 L(x0)`` (e.g. a DRR mismatch with the input X-rays).
3. ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (exactly this order and sign: any other form makes the DDIM
   trajectory diverge).
4. ``sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)``.
5. ``x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z``.

``s`` is the next entry of the actual timestep list, never ``t - stride`` (MONAI 1.6's ``DDIMScheduler.step`` mixes
the two and lands off the list).

Starting part-way (``strength`` < 1, for a super-resolution stage): sampling begins at ``t0 = round(strength (T-1))``
from ``x_t0 = sqrt(a_t0) x_init + sqrt(1 - a_t0) z``, the forward process applied to a first guess ``x_init`` (the
previous stage's output, upsampled), and walks the timesteps from ``t0`` down to 0. The guess then keeps the
structure it already has and the network only has to add what is missing at the noise levels below ``t0``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from custom.xray2ct.schedule import add_noise, eps_from_x0, normalized_timestep, x0_from_v

# network(x_t, t_normalized, **condition) -> v
VNetwork = Callable[..., torch.Tensor]


class DDIMSampler:
    """Deterministic (eta = 0) or stochastic DDIM over a v-prediction network.

    Args:
        alpha_bar: (T,) alpha-bar of the training schedule (see :func:`cosine_alpha_bar`).
        num_inference_steps: number of network calls.
        eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral noise.
        clip_x0: clamp of the predicted ``x0``; None to disable.
        strength: where sampling starts, as a fraction of the schedule: 1 from pure noise, less from a noised
            first guess passed to :meth:`sample` as ``x_init`` (ignored without one).
    """

    def __init__(
        self,
        alpha_bar: torch.Tensor,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        clip_x0: Sequence[float] | None = (-1.5, 1.5),
        strength: float = 1.0,
    ):
        self.alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        self.num_train_timesteps = len(self.alpha_bar)
        if not 1 <= int(num_inference_steps) <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in 1..{self.num_train_timesteps}, got {num_inference_steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        self.num_inference_steps = int(num_inference_steps)
        self.strength = float(strength)
        self.eta = float(eta)
        self.clip_x0 = tuple(clip_x0) if clip_x0 is not None else None

    @property
    def timesteps(self) -> list[int]:
        """Descending timesteps from T-1 to 0, evenly spaced, no repeats."""
        return self.timesteps_from(self.num_train_timesteps - 1)

    def timesteps_from(self, start: int) -> list[int]:
        """Descending timesteps from ``start`` to 0, evenly spaced, no repeats."""
        t = torch.linspace(int(start), 0, self.num_inference_steps).round().long()
        return list(dict.fromkeys(t.tolist()))

    @property
    def start_timestep(self) -> int:
        """``t0 = round(strength (T-1))``, the first timestep when sampling starts from a first guess."""
        return max(int(round(self.strength * (self.num_train_timesteps - 1))), 0)

    def step(self, v, x_t, t: int, t_prev: int, guidance=None, guidance_scale: float = 0.0, generator=None):
        """One DDIM update; returns ``(x_prev, x0)``."""
        a_t = self.alpha_bar[t].to(x_t.device)
        a_s = self.alpha_bar[t_prev].to(x_t.device) if t_prev >= 0 else torch.ones((), dtype=torch.float64)
        a_s = a_s.to(x_t.device)
        x0 = x0_from_v(x_t, v, a_t.expand(x_t.shape[0]))
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
        if guidance is not None and guidance_scale > 0:
            with torch.enable_grad():
                x = x0.detach().requires_grad_()
                (grad,) = torch.autograd.grad(guidance(x), x)
            x0 = x0 - guidance_scale * grad
            if self.clip_x0 is not None:
                x0 = x0.clamp(*self.clip_x0)
        eps = eps_from_x0(x_t, x0, a_t.expand(x_t.shape[0]))
        sigma = self.eta * torch.sqrt((1 - a_s) / (1 - a_t)) * torch.sqrt((1 - a_t / a_s).clamp(min=0))
        sigma = sigma.to(x_t.dtype)
        a_s = a_s.to(x_t.dtype)
        x_prev = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and t_prev >= 0:
            gen_device = generator.device if generator is not None else x_t.device
            z = torch.randn(x_t.shape, generator=generator, device=gen_device, dtype=x_t.dtype).to(x_t.device)
            x_prev = x_prev + sigma * z
        return x_prev, x0

    @torch.no_grad()
    def sample(
        self,
        network: VNetwork,
        shape: Sequence[int],
        condition: dict | None = None,
        generator: torch.Generator | None = None,
        device=None,
        guidance: Callable[[torch.Tensor], torch.Tensor] | None = None,
        guidance_scale: float = 0.0,
        progress: bool = False,
        x_t: torch.Tensor | None = None,
        x_init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw samples of ``shape`` (batch first) from noise; ``condition`` is passed to the network as kwargs.

        A seeded ``generator`` makes the result reproducible (the noise is drawn on it, on CPU unless the
        generator lives on the device). ``x_init`` (``shape``), with ``strength`` < 1: the first guess sampling
        starts from, noised to the start timestep.
        """
        from tqdm.auto import tqdm

        condition = condition or {}
        steps = self.timesteps
        if x_t is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            x_t = torch.randn(tuple(shape), generator=generator, device=gen_device)
            if x_init is not None and self.strength < 1.0:
                steps = self.timesteps_from(self.start_timestep)
                a = self.alpha_bar[steps[0]].to(torch.float32).expand(x_t.shape[0])
                x_t = add_noise(x_init.to(x_t.device, x_t.dtype), x_t, a)
        x_t = x_t.to(device or x_t.device)
        for i, t in enumerate(tqdm(steps, desc="DDIM", leave=False, disable=not progress)):
            t_prev = steps[i + 1] if i + 1 < len(steps) else -1
            tt = torch.full((x_t.shape[0],), t, device=x_t.device)
            v = network(x_t, normalized_timestep(tt, self.num_train_timesteps), **condition)
            x_t, _ = self.step(v, x_t, t, t_prev, guidance, guidance_scale, generator)
        return x_t
