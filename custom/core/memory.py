"""Refusing work that cannot fit in memory before it starts.

PyTorch and NumPy do not refuse an oversized allocation on Linux: the process swaps, or the operating system kills
it minutes later (``prepare`` then leaves a half-built case behind), with no hint of which setting to change. Each
command estimates its peak from its settings and calls :func:`check_memory` before allocating anything.
"""

from __future__ import annotations

import os

from custom.core.errors import InputError

GIB = 2**30


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without a limit (containers, batch jobs)."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.strip().split("::", 1)[1] for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        folder = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """Memory the process can still take: Linux ``MemAvailable`` (other systems: free physical pages), and no more
    than what its cgroup's limit leaves; None when unknown."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    room = _cgroup_room()
    return room if free is None else (free if room is None else min(free, room))


def check_memory(estimate: float, what: str, lower: str, margin: float = 1.2) -> None:
    """Refuse ``what`` when ``estimate`` bytes (times ``margin`` of headroom) exceed the available memory; ``lower``
    names the options to lower. Unknown available memory lets everything through."""
    free = available_bytes()
    if free is not None and estimate * margin > free:
        raise InputError(
            f"{what} needs about {estimate / GIB:.1f} GiB of memory, but only {free / GIB:.1f} GiB are available: "
            f"lower {lower}"
        )
