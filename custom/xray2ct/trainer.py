"""Ignite engines for the X-ray -> CT diffusion cascade, built on MONAI's ``SupervisedTrainer``.

MONAI's ``DiffusionInferer`` + ``VPredictionPrepareBatch`` train a v-predictor from JSON, but the cascade's loss also
needs the predicted ``x0`` (image losses, DRR physics loss), so the trainer overrides ``_iteration``, firing the
same events as MONAI's. The evaluator is MONAI's ``SupervisedEvaluator`` with :class:`DDIMInferer`, which samples.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from custom.core.losses import SeparableSSIMLoss
from custom.xray2ct.losses import DRRConsistencyLoss, gradient_loss
from custom.xray2ct.schedule import add_noise, cosine_alpha_bar, normalized_timestep, velocity, x0_from_v


def prepare_cascade_batch(batchdata, device=None, non_blocking=False, **kwargs):
    """(inputs, targets, args, kwargs) = (xray (B, 2, N, N), ct (B, 1, D, D, D), (), {prev: ...}) from a batch dict.

    Not MONAI's ``PrepareBatchExtraInput``: that one reads the ``image``/``label`` keys and needs every extra key,
    while here the CT is absent at inference and ``prev`` exists only for stages 2 and 3.
    """
    xray = batchdata["xray"].to(device=device, non_blocking=non_blocking)
    ct = batchdata.get("ct")  # absent, or an unloaded path, at inference
    ct = ct.to(device=device, non_blocking=non_blocking) if isinstance(ct, torch.Tensor) else None
    extra = {}
    for key in ("prev", "coords"):  # the previous stage's output; the voxel coordinates of a sub-volume
        if isinstance(batchdata.get(key), torch.Tensor):
            extra[key] = batchdata[key].to(device=device, non_blocking=non_blocking)
    return xray, ct, (), extra


class CascadeDiffusionTrainer(SupervisedTrainer):
    """v-prediction diffusion training with image and physics losses on the predicted ``x0``.

    ``loss = MSE(v) + mean_b[ w_b * (w_l1 L1 + w_ssim (1 - SSIM) + w_grad gradient + w_physics DRR)(x0_b) ]``, with
    ``w_b = a_t`` (alpha-bar of the sample's timestep, ``x0_loss_weighting="alpha_bar"``) so that nearly pure-noise
    steps, whose ``x0`` is a guess, count little, or ``w_b = 1`` (``"none"``). ``x0`` is clamped to ``clip_x0``
    (the data range with a margin, so the image losses compare values in the range of the targets). The network
    gets ``t / T``, through the same function the sampler uses.

    Args (beyond ``SupervisedTrainer``'s; ``loss_function`` is unused and may be None):
        num_train_timesteps: T of the cosine schedule.
        loss_weights: dict with ``l1``, ``ssim``, ``gradient``, ``physics``.
        physics_loss: a :class:`DRRConsistencyLoss` (needed when ``loss_weights["physics"] > 0``).
        ssim_win_size: SSIM window (odd, at most the volume side).
        grad_clip: max gradient norm (None: no clipping).
        clip_x0: clamp of the predicted ``x0``.
    """

    def __init__(
        self,
        *args,
        num_train_timesteps: int = 1000,
        loss_weights: dict | None = None,
        physics_loss: DRRConsistencyLoss | None = None,
        ssim_win_size: int = 7,
        grad_clip: float | None = 1.0,
        clip_x0: Sequence[float] = (-1.5, 1.5),
        x0_loss_weighting: str = "alpha_bar",
        **kwargs,
    ):
        if x0_loss_weighting not in ("alpha_bar", "none"):
            raise ValueError(f"x0_loss_weighting must be 'alpha_bar' or 'none', got {x0_loss_weighting!r}")
        self.x0_loss_weighting = x0_loss_weighting
        kwargs.setdefault("loss_function", None)
        kwargs.setdefault("prepare_batch", prepare_cascade_batch)
        super().__init__(*args, **kwargs)
        self.num_train_timesteps = int(num_train_timesteps)
        self.alpha_bar = cosine_alpha_bar(self.num_train_timesteps).float()
        self._alpha_bar_on: dict = {}
        weights = {"l1": 1.0, "ssim": 0.5, "gradient": 0.15, "physics": 0.0}
        weights.update(loss_weights or {})
        self.loss_weights = weights
        if weights["physics"] > 0 and physics_loss is None:
            raise ValueError("loss_weights['physics'] > 0 needs physics_loss (a DRRConsistencyLoss)")
        self.physics_loss = physics_loss
        # MONAI's SSIMLoss in value and gradient, several times faster (see custom.core.losses)
        self.ssim_loss = SeparableSSIMLoss(data_range=2.0, win_size=ssim_win_size, reduction="none")
        self.grad_clip = grad_clip
        self.clip_x0 = tuple(clip_x0)

    def _alpha_bar(self, device) -> torch.Tensor:
        if device not in self._alpha_bar_on:
            self._alpha_bar_on[device] = self.alpha_bar.to(device)
        return self._alpha_bar_on[device]

    def compute_losses(self, network, xray, ct, extra) -> dict:
        b = ct.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), device=ct.device)
        a = self._alpha_bar(ct.device)[t]
        eps = torch.randn_like(ct)
        x_t = add_noise(ct, eps, a)
        with torch.autocast(device_type=ct.device.type, enabled=self.amp):
            v_pred = network(x_t, normalized_timestep(t, self.num_train_timesteps), xray, **extra)
        v_pred = v_pred.float()
        losses = {"mse_v": F.mse_loss(v_pred, velocity(ct, eps, a))}
        x0 = x0_from_v(x_t, v_pred, a).clamp(*self.clip_x0)
        per_sample = {}
        if self.loss_weights["l1"]:
            per_sample["l1"] = (x0 - ct).abs().flatten(1).mean(1)
        if self.loss_weights["ssim"]:
            per_sample["ssim"] = self.ssim_loss(x0, ct).flatten(1).mean(1)
        if self.loss_weights["gradient"]:
            per_sample["gradient"] = gradient_loss(x0, ct)
        if self.loss_weights["physics"]:
            per_sample["physics"] = self.physics_loss(x0, ct)
        # each sample's x0 terms count in proportion to its signal level a_t: at a_t ~ 0 the x0 estimate is a guess
        w = a if self.x0_loss_weighting == "alpha_bar" else torch.ones_like(a)
        total = losses["mse_v"]
        for name, value in per_sample.items():
            losses[name] = (w * value).mean()
            total = total + self.loss_weights[name] * losses[name]
        losses["total"] = total
        return losses

    def _iteration(self, engine, batchdata):
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        xray, ct, _, extra = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: xray, Keys.LABEL: ct}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        losses = self.compute_losses(engine.network, xray, ct, extra)
        engine.state.output[Keys.PRED] = None
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = losses["total"]
        engine.state.output[Keys.LOSS] = loss
        names = list(losses)
        values = torch.stack([losses[k].detach().float() for k in names]).tolist()  # one device sync
        engine.state.output["losses"] = dict(zip(names, values))
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss_value = engine.state.output["losses"]["total"]
        if not math.isfinite(loss_value):
            # a NaN/Inf loss must not reach the weights: skip the step and say so
            self.logger.warning(f"non-finite loss {loss_value} at iteration {engine.state.iteration}; step skipped")
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.fire_event(IterationEvents.MODEL_COMPLETED)
            return engine.state.output
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.grad_clip:
                engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
