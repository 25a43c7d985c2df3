"""Naming and picking cases out of a batch, for handlers that write one folder per case."""

from __future__ import annotations

from pathlib import Path

import torch


def batch_item(batch, i: int) -> dict:
    """The i-th case of a batch, whether MONAI has decollated it (list of dicts) or not (dict of batched values)."""
    if isinstance(batch, (list, tuple)):
        return batch[i]

    def pick(v):
        if isinstance(v, dict):
            return {k: pick(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)) or (isinstance(v, torch.Tensor) and v.ndim > 0):
            return v[i]
        return v

    return {k: pick(v) for k, v in (batch or {}).items()}


def case_name(item: dict, index: int) -> str:
    for key in ("case_id", "frontal_meta"):
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("filename_or_obj")
        if value:
            name = Path(str(value)).name
            for suffix in (".nii.gz", ".nii", ".dcm", ".png"):
                name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
            return name if key == "case_id" else f"{name}_{index:04d}"
    return f"case_{index:04d}"
