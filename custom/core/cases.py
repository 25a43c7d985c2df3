"""Naming and picking cases out of a batch, for handlers that write one folder per case."""

from __future__ import annotations

from pathlib import Path

import torch

from custom.core.errors import InputError


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


# file names that say nothing about the case: the case is then named after its folder (``<case>/frontal.nii.gz`` is
# how ``prepare`` lays out its cases, ``<case>/ct.nii.gz`` how the cascade bundle writes its outputs)
GENERIC_STEMS = {"ct", "coarse", "refined", "image", "volume", "frontal", "lateral"}


def _strip_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".dcm", ".png"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def file_case_name(path) -> str:
    """A case name from one input file (or DICOM folder): its name without extension, or its folder's for generic
    names like ``<case>/frontal.nii.gz``."""
    path = Path(str(path))
    name = _strip_suffix(path.name)
    return path.parent.name if name.lower() in GENERIC_STEMS and path.parent.name else name


def case_name(item: dict, index: int) -> str:
    """The case's name for its outputs: its ``case_id`` when the data list gives one, otherwise the names of its two
    X-ray files (``<frontal>__<lateral>``, or their folder's for generic names), so that runs of two patients into
    one folder never share a name."""
    if item.get("case_id"):
        return _strip_suffix(Path(str(item["case_id"])).name)
    metas = (item.get("frontal_meta"), item.get("lateral_meta"))
    names = [file_case_name(m["filename_or_obj"]) for m in metas if isinstance(m, dict) and m.get("filename_or_obj")]
    return "__".join(dict.fromkeys(names)) if names else f"case_{index:04d}"  # one name when both files share it


def claim_output(path, overwrite: bool = False, folder: bool = True) -> Path:
    """Reserve ``path`` (a case's output folder, or with ``folder=False`` its first output file) for this run, or
    refuse when results are already there.

    Creating a folder is atomic, so of two runs writing the same case into one folder at the same time exactly one
    gets it; the other stops with a message instead of silently replacing the first one's results. A file is only
    checked: a placeholder would be a half-written file if the run then failed before writing it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    taken = path.exists() if not folder else not _made(path)
    if taken and not overwrite:
        raise InputError(
            f"{path} already holds the results of a case of the same name; choose another output_dir, or set "
            "overwrite true to replace them"
        )
    return path


def _made(folder: Path) -> bool:
    try:
        folder.mkdir()
        return True
    except FileExistsError:
        return False
