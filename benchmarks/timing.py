"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so importable as-is)."""

from __future__ import annotations

import time


def sync(device) -> None:
    """Wait for queued CUDA work, so a timer measures the work and not its launch."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call, in seconds."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best
