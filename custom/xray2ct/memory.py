"""Estimate the memory of a cascade training step before a CPU run starts, and stop early when it cannot fit.

On a CPU machine an oversized stage (256^3, or a large batch at 128^3) is not refused by PyTorch: it swaps or is
killed by the operating system minutes later, with no hint of which setting to change. The estimate here is
measured, not guessed: forward passes of the real network and losses at two small probe sizes, counting the
distinct storages autograd keeps for the backward pass, fitted as a fixed part plus a part per voxel and
extrapolated to the configured size, plus weights, gradients, AdamW moments and the EMA copy.
"""

from __future__ import annotations

import torch
from ignite.engine import Events

from custom.core.errors import InputError
from custom.core.memory import GIB, available_bytes
from custom.core.options import as_bool


def _saved_bytes(trainer, net, size: int, xray_size: int) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one step at batch 1, side ``size``."""
    device = next(net.parameters()).device
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()  # views and re-saved tensors share one storage: count it once
        return t

    ct = torch.zeros(1, 1, size, size, size, device=device)
    xray = torch.zeros(1, 2, xray_size, xray_size, device=device)
    extra = {"prev": ct.clone()} if getattr(net, "use_prev", False) else {}
    if hasattr(net, "lift_xrays"):  # a sub-volume denoiser: the probe is a crop, given by its voxel coordinates
        from custom.xray2ct.patch_network import cube_coordinates

        extra["coords"] = cube_coordinates(size, device=device)[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.compute_losses(net, xray, ct, extra)
    return sum(storages.values())


def estimate_step_bytes(trainer, network, volume_size: int, batch_size: int, xray_size: int, probe_size: int = 16):
    """Bytes one training step of ``trainer.compute_losses`` needs at ``volume_size`` and ``batch_size``.

    Two probes (``probe_size`` and twice that) separate the part that grows with the voxel count from the part that
    does not (the ViT on its fixed token grid, the X-ray encoders): ``saved(D) = fixed + per_voxel * D^3``.
    """
    net = getattr(network, "module", network)
    was_training = net.training
    net.train()
    try:
        p1, p2 = int(probe_size), 2 * int(probe_size)
        s1, s2 = _saved_bytes(trainer, net, p1, xray_size), _saved_bytes(trainer, net, p2, xray_size)
    finally:
        net.train(was_training)
    per_voxel = max(0.0, (s2 - s1) / (p2**3 - p1**3))
    fixed = max(0.0, s1 - per_voxel * p1**3)
    params = sum(q.numel() * q.element_size() for q in net.parameters())
    # activations per sample, plus weights + gradients + two AdamW moments + the EMA copy
    return int((fixed + per_voxel * volume_size**3) * batch_size + 5 * params)


class MemoryCheck:
    """Ignite handler: at the start of a CPU run, refuse a step that needs more memory than the machine has.

    Args:
        volume_size: D of the stage.
        batch_size: samples per step.
        xray_size: detector pixels per side.
        margin: required headroom factor over the estimate (allocator slack, data loading).
        enabled: turn the check off (``memory_check`` in the config).
    """

    def __init__(self, volume_size: int, batch_size: int, xray_size: int, margin: float = 1.2, enabled: bool = True):
        self.volume_size, self.batch_size, self.xray_size = int(volume_size), int(batch_size), int(xray_size)
        self.margin, self.enabled = float(margin), as_bool(enabled, "memory_check")
        self.estimate: int | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        device = getattr(engine.state, "device", None) or next(engine.network.parameters()).device
        if not self.enabled or torch.device(device).type != "cpu":
            return
        self.estimate = estimate_step_bytes(engine, engine.network, self.volume_size, self.batch_size, self.xray_size)
        free = available_bytes()
        engine.logger.info(f"memory check: a training step needs about {self.estimate / GIB:.1f} GiB")
        if free is not None and self.estimate * self.margin > free:
            raise InputError(
                f"a training step at volume_size {self.volume_size} with batch_size {self.batch_size} needs about "
                f"{self.estimate / GIB:.1f} GiB on the CPU, but only {free / GIB:.1f} GiB are available: lower "
                "batch_size, set gradient_checkpointing true, train this stage on a GPU, or set memory_check false "
                "to try anyway"
            )
