"""Small Ignite handlers MONAI does not have."""

from __future__ import annotations

import torch
from monai.engines.utils import IterationEvents


class GradientClipping:
    """Clip the gradient norm after the backward pass of a MONAI trainer, AMP-aware (unscales first).

    MONAI's ``SupervisedTrainer`` has no clipping option; this hooks ``IterationEvents.BACKWARD_COMPLETED``, which
    fires between ``backward()`` and the optimizer step.
    """

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = float(max_norm)

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class LossComponentsLogger:
    """Every ``interval`` iterations, log the components a loss keeps in ``loss.last`` (e.g. RefinerLoss)."""

    def __init__(self, loss, interval: int = 10, name: str = "loss components"):
        self.loss, self.interval, self.name = loss, max(1, int(interval)), name

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine) -> None:
        parts = " ".join(f"{k}: {v:.4f}" for k, v in getattr(self.loss, "last", {}).items())
        engine.logger.info(f"Epoch {engine.state.epoch} iteration {engine.state.iteration} {self.name} -- {parts}")


class CopyWeights:
    """At the start of a run, copy the weights of ``source`` into ``target`` (DDP wrappers are looked through).

    Used to start an EMA model from weights loaded into the online network by an ``init_from`` checkpoint loader:
    ignite's ``EMAHandler`` copies the network when it is built, before any loader has run.
    """

    def __init__(self, source: torch.nn.Module, target: torch.nn.Module):
        self.source, self.target = source, target

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        src = getattr(self.source, "module", self.source)
        dst = getattr(self.target, "module", self.target)
        dst.load_state_dict(src.state_dict())


class AtomicCheckpointSaver:
    """MONAI's ``CheckpointSaver`` whose files are written under a temporary name and renamed into place.

    MONAI builds its savers with ``atomic=False`` (for file permissions), so a crash or a kill while a checkpoint is
    written leaves a truncated file under the final name, which a resumed run then fails to load; ignite's atomic
    save also sets group/other read permission, so the permission concern does not apply. Same arguments as
    ``monai.handlers.CheckpointSaver``.
    """

    def __new__(cls, *args, **kwargs):
        from monai.handlers import CheckpointSaver

        saver = CheckpointSaver(*args, **kwargs)
        for ckpt in (saver._final_checkpoint, saver._key_metric_checkpoint, saver._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True
        return saver
