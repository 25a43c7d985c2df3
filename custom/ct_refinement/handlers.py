"""Training handlers of the CT refiners."""

from __future__ import annotations

from pathlib import Path

import torch

from custom.core.io import atomic_path


class SaveWeights:
    """Write the network's weights as a plain state dict (``torch.load(weights_only=True)`` and a strict
    ``load_state_dict`` read it) every ``every`` epochs and at the end of the run, atomically.

    A run stopped by a timeout or a kill between two validations still leaves its latest usable weights (the EMA
    weights when ``network`` is the EMA model). DDP wrappers are looked through; in a multi-process run only rank 0
    writes.
    """

    def __init__(self, network: torch.nn.Module, path, every: int = 1):
        self.network, self.path, self.every = network, Path(path), max(1, int(every))

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_rank() != 0:
                return
        net = getattr(self.network, "module", self.network)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save(state, tmp)
