"""Reading network weights safely: one place for ``weights_only`` loading and the checkpoint layouts we write."""

from __future__ import annotations

import torch


def read_state_dict(path, map_location="cpu") -> dict:
    """The network state dict in ``path``: a plain state dict, or the ``"model"`` entry of a full training checkpoint.

    ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only and can run no code.
    """
    state = torch.load(str(path), map_location=map_location, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state
