"""Crash-safe writers: every file is written to a temporary name in the same folder and renamed into place.

A rename within a folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either the previous
complete file or the new complete file, never a truncated one.

A process killed while writing (out of memory, SIGKILL) cannot clean up, so every temporary name carries its
writer's process id and host, ``.<name>.<pid>@<host>.<random>.tmp...``, and :func:`remove_stale_temporaries`
removes those whose writer on this machine is gone. Temporary files and folders get the permissions the umask
gives any new file, not ``mkstemp``'s and ``mkdtemp``'s private 0600 and 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from custom.core.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..*\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[A-Za-z0-9_]+\.tmp")


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{_HOST}."


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds, delete it otherwise.

    ``suffix`` keeps the extension that writers dispatch on (``.nii.gz``, ``.png``); it defaults to the full
    suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs should get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a new temporary folder next to ``path``; if the block succeeds it replaces ``path`` (an existing folder
    there is removed first), otherwise it is deleted. A crash never leaves a half-filled folder under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700: the renamed folder would stay private to its owner
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temporaries(folder) -> list:
    """Delete the temporary files and folders in ``folder`` (not below it) whose writer ran on this machine and is
    no longer running; returns their paths. Live writers, other machines' (a shared disk) and other files are
    left alone. POSIX only: elsewhere nothing is removed."""
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _TEMPORARY.match(entry.name)
        if not m or m["host"] != _HOST or int(m["pid"]) == os.getpid() or not _process_gone(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def save_json(obj, path) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")


def save_table(rows: list, path) -> None:
    """Write a list of dicts as CSV, atomically; the columns are every key in order of first appearance (a row
    without one leaves its cell empty)."""
    import csv

    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
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


def load_array(path, key: str | None = None) -> np.ndarray:
    """A numeric array from a ``.npy`` file (or member ``key`` of a ``.npz``), never unpickling anything.

    NumPy refuses object arrays without ``allow_pickle=True`` and says so; allowing it would let the file run code,
    so the message here says what the file is instead: not a numeric array.
    """
    try:
        if key is None:
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                arr = archive[key]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise InputError(
                f"{path}: not a numeric array (it holds pickled Python objects); save the numbers themselves, e.g. "
                "np.save(path, np.asarray(probabilities, dtype=np.float32))"
            ) from None
        raise InputError(f"{path}: not a readable NumPy file ({e})") from None
    except KeyError:
        raise InputError(f"{path}: no array named {key!r} in it") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable NumPy file ({e})") from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{path}: not a numeric array (dtype {getattr(arr, 'dtype', type(arr).__name__)})")
    return arr
