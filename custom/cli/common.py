"""What every command group shares: option checks, output folders, JSON options, geometry arguments.

Fire hands a command the options as it parsed them (``2.5`` a float, ``false`` a string, ``abc`` a string), so each
option is checked at the start of its command, before any work, by the helper for its kind: :func:`as_int`,
:func:`as_float`, :func:`as_bool`, :func:`as_choice`, :func:`as_names` (one implementation,
:mod:`custom.core.options`, shared with the bundles' request checks), and output folders by :func:`need_dir_path`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from custom.core.errors import InputError
from custom.core.options import as_bool, as_choice, as_float, as_int, as_names, writable_dir

__all__ = [
    "as_bool",
    "as_choice",
    "as_float",
    "as_int",
    "as_names",
    "config_defaults",
    "geometry_arg",
    "json_dict",
    "need_dir",
    "need_dir_path",
    "square_size",
]

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
BUNDLES_DIR = ROOT / "bundles"


def config_defaults(path, given: dict) -> dict:
    """``given`` with its None values taken from the JSON file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        with open(path) as f:
            defaults = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    unknown = set(defaults) - set(given)
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(given)}")
    return {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}


def json_dict(value, option: str = "--overrides", example: str = '{"volume_size": 64}') -> dict:
    """A JSON object option (a string on the command line, a dict from Python). The types of its values are checked
    against the bundle's config where it is applied (:func:`custom.core.bundle.loading.check_overrides`)."""
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{option} must be a JSON dict, e.g. '{example}' ({e})") from None
    if not isinstance(parsed, dict):
        raise InputError(f"{option} must be a JSON dict, e.g. '{example}'; got {value!r}")
    return parsed


def need_dir_path(out_dir, option: str = "out_dir") -> Path:
    """Validate an output folder argument without creating anything: a folder (or a path that can become one) that
    this process can write to, so that a command fails at its start, not after its work is done."""
    if out_dir is None or str(out_dir).strip() == "":
        raise InputError("give an output folder")
    path = Path(os.fspath(str(out_dir))).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    writable_dir(path, option)
    return path


def need_dir(out_dir, option: str = "out_dir") -> Path:
    path = need_dir_path(out_dir, option)
    path.mkdir(parents=True, exist_ok=True)
    return path


def square_size(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(int(s) for s in size)) != 1:
            raise InputError(
                f"the detector must be square (both views feed square 2D encoders): got {size}; give one --size"
            )
        size = size[0]
    return as_int(size, "--size", 2)


def geometry_arg(geometry, size):
    """The projection geometry named (or given as a JSON file) on the command line, with ``size`` pixels."""
    from custom.core.physics import get_geometry

    size = None if size is None else square_size(size)
    try:
        return get_geometry(str(geometry), size)
    except KeyError as e:
        raise InputError(
            f"geometry {geometry}: missing key {e}; see configs/drr_geometry.json for the fields"
        ) from None
    except (ValueError, TypeError) as e:
        raise InputError(f"geometry {geometry}: {e}") from None
