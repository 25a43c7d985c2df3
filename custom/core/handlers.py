"""Small Ignite handlers MONAI does not have."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler


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


class EpochValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` at epoch level that also validates after the last epoch of the run.

    MONAI's validates every ``interval`` epochs only, so a run shorter than ``interval`` epochs (or one whose length
    is not a multiple of it) ends without validating its final weights, and the best-metric checkpoint they would
    have written (``model.pt``) never appears. Same arguments as ``monai.handlers.ValidationHandler``, without
    ``epoch_level``.
    """

    def __init__(self, interval: int, validator=None, exec_at_start: bool = False):
        super().__init__(interval, validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        def due(engine, epoch) -> bool:
            return epoch % self.interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        # Validation must not change training: its data loader draws a seed from torch's generator, so without this
        # a run that validates at an epoch (its last) would continue differently from one that does not, and a
        # resumed run would no longer end with the weights of an uninterrupted one.
        rng = RNGState()
        state = rng.state_dict()
        try:
            super().__call__(engine)
        finally:
            rng.load_state_dict(state)


class TrainingTimeLimit:
    """End training cleanly after ``minutes`` of wall-clock time (0: no limit), for a run that must fit a budget.

    Ignite's own ``TimeLimit`` is a bare callable; this one attaches like MONAI's handlers, so a bundle config can
    list it among ``train_handlers``. Terminating fires ``COMPLETED``, so the final checkpoint is still saved.
    """

    def __init__(self, minutes: float = 0.0):
        self.seconds = float(minutes) * 60.0
        self._start = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.seconds > 0:
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine) -> None:
        import time

        self._start = time.monotonic()

    def __call__(self, engine) -> None:
        import time

        stop = time.monotonic() - self._start >= self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process must stop at the same iteration, or the others wait forever in their next all-reduce
            device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            engine.logger.info(f"time limit of {self.seconds / 60:g} min reached: training stops after this iteration")
            engine.terminate()


class InitFromWeights:
    """Start a training run from another run's weights: every tensor of ``path`` whose name and shape match the
    network's is copied in, the others keep their initialisation, and the log says how many matched.

    Written because MONAI's ``CheckpointLoader`` with ``strict_shape=False`` passes the whole checkpoint dictionary
    rather than the model's entry to ``copy_model_state``: no tensor matches, and the network silently keeps its
    random start while the log reports "Restored all variables" (MONAI 1.6.1).

    Args:
        network: the network being trained (a DDP wrapper is looked through).
        path: a plain state dict or a training checkpoint with a ``"model"`` entry; empty: nothing is loaded.
    """

    def __init__(self, network: torch.nn.Module, path: str = ""):
        self.network, self.path = network, str(path or "")

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        import logging

        from monai.networks.utils import copy_model_state

        from custom.core.checkpoint import read_state_dict
        from custom.core.errors import InputError

        if not self.path:
            return
        if not Path(self.path).is_file():
            raise InputError(f"init_from: {self.path} is not a file; give a weights file or leave init_from empty")
        try:
            state = read_state_dict(self.path)
        except Exception as e:
            raise InputError(
                f"init_from: {self.path} is not a checkpoint of tensors ({type(e).__name__}: {e})"
            ) from None
        net = getattr(self.network, "module", self.network)
        _, updated, unchanged = copy_model_state(net, state, inplace=True)
        if not updated:
            raise InputError(
                f"init_from: no tensor of {self.path} fits the network by name and shape; it is a checkpoint of "
                "another architecture"
            )
        logging.getLogger(__name__).info(
            f"init_from {self.path}: {len(updated)} tensors loaded, {len(unchanged)} kept their initialisation"
        )


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


class RNGState:
    """The random generators of a training process, as a checkpointable object (``state_dict``/``load_state_dict``).

    Put it in a checkpoint's ``save_dict`` so that a resumed run draws the same noise, timesteps, augmentations and
    shuffles as an uninterrupted one would: Python's ``random``, NumPy's global generator, torch's CPU generator and
    every CUDA device's. The state holds tensors and plain containers only, so ``torch.load(weights_only=True)``
    reads it.
    """

    def state_dict(self) -> dict:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        state = {
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
            "numpy_gauss": {"has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np

        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
        npy, gauss = state["numpy"], state["numpy_gauss"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], gauss["has_gauss"], gauss["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class EMAWarmupState:
    """Checkpointable position of an ignite ``EMAHandler``'s momentum warm-up.

    ignite keeps the warm-up's iteration count inside the handler's ``momentum_scheduler``, which is not part of
    the trainer's state: without this, a resumed run starts the warm-up again and its EMA weights drift from an
    uninterrupted run's. (The scheduler's own ``state_dict`` holds a Python object, which
    ``torch.load(weights_only=True)`` refuses.)
    """

    def __init__(self, ema):
        self.ema = ema

    def state_dict(self) -> dict:
        scheduler = getattr(self.ema, "momentum_scheduler", None)
        return {"event_index": int(scheduler.event_index) if scheduler is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        scheduler = getattr(self.ema, "momentum_scheduler", None)
        if scheduler is not None:
            scheduler.event_index = int(state["event_index"])


def latest_checkpoint(folder, pattern: str = "checkpoint_*.pt") -> str:
    """Path of the newest checkpoint in ``folder`` matching ``pattern`` ('' when there is none): where
    ``--resume true`` continues from."""
    found = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else ""
