"""Crash-safe writers: every file is written to a temporary name in the same folder and renamed into place.

A rename within a folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either the previous
complete file or the new complete file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds, delete it otherwise.

    ``suffix`` keeps the extension that writers dispatch on (``.nii.gz``, ``.png``); it defaults to the full
    suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs should get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_json(obj, path) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")


def save_table(rows: list, path) -> None:
    """Write a list of dicts (same keys) as CSV, atomically."""
    import csv

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def save_report(rows: list, summary: dict, out_dir) -> None:
    """``metrics.csv`` (one row per case) and ``summary.json`` in ``out_dir``: the evaluation commands' outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_table(rows, out / "metrics.csv")
    save_json(summary, out / "summary.json")


def save_nifti(array, affine, path, dtype=np.float32, description: str | None = None) -> None:
    """Write ``array`` with ``affine`` (RAS, mm) as NIfTI, atomically."""
    arr = np.asarray(array)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    img = nib.Nifti1Image(arr.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description[:79].encode()
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_png(image_uint8: np.ndarray, path) -> None:
    """Write a (rows, cols) or (rows, cols, 3) uint8 array as PNG, atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image_uint8)).save(tmp, format="PNG")
