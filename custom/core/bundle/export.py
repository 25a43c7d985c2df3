"""Standalone export of a bundle: one reproducible zip holding the bundle and the ``custom`` code it runs.

Layout of ``NAME_v<version>.zip`` (the model-zoo layout, with the project code inside the bundle folder)::

    NAME/configs/...           the bundle's configs, plus drr_geometry.json (the X-ray geometry presets)
    NAME/docs/..., NAME/LICENSE, NAME/models/...
    NAME/custom/...            the project's Python package, sources only

``python -m monai.bundle run --config_file NAME/configs/inference.json --bundle_root NAME`` then works from any
working directory: MONAI puts the folder above ``configs/`` on ``sys.path`` before running, and the bundles reach
the project code only through ``_target_`` paths, which are resolved at that point.

The archive is byte-for-byte reproducible: entries are sorted, timestamps fixed to 1980-01-01 and permissions
normalised, so two exports of the same tree have the same checksum (a user can verify what they downloaded).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from custom.core.errors import InputError
from custom.core.io import atomic_path

PACKAGE_DIR = Path(__file__).resolve().parents[2]
PROJECT_CONFIGS = PACKAGE_DIR.parent / "configs"
# what a bundle needs from the project's own configs/ at run time (the geometry presets read by custom.core.physics)
SHARED_CONFIGS = ("drr_geometry.json",)
# never shipped: outputs of training and evaluation runs, caches, editor and OS leftovers
SKIP_DIRS = {"runs", "eval", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".swp", ".DS_Store"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not SKIP_DIRS & set(rel.parts[:-1]) and path.suffix not in SKIP_SUFFIXES:
            if not path.name.startswith("."):
                yield rel, path


def bundle_entries(bundle_dir) -> dict[str, Path]:
    """Archive name -> file on disk, for everything :func:`export_bundle` puts in the zip."""
    bundle_dir = Path(bundle_dir).resolve()
    name = bundle_dir.name
    entries = {f"{name}/{rel.as_posix()}": path for rel, path in _files(bundle_dir)}
    for rel, path in _files(PACKAGE_DIR):
        if path.suffix == ".py":
            entries[f"{name}/custom/{rel.as_posix()}"] = path
    for fname in SHARED_CONFIGS:
        entries.setdefault(f"{name}/configs/{fname}", PROJECT_CONFIGS / fname)
    return entries


def export_bundle(bundle_dir, out_dir) -> Path:
    """Write ``out_dir/NAME_v<version>.zip`` for the bundle folder ``bundle_dir``; returns the zip's path."""
    bundle_dir = Path(bundle_dir)
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise InputError(f"{bundle_dir}: not a bundle folder (no configs/metadata.json)")
    try:
        version = json.loads(meta_file.read_text())["version"]
    except (ValueError, KeyError) as e:
        raise InputError(f"{meta_file}: cannot read the bundle version ({e})") from None
    if not (bundle_dir / "models" / "model.pt").is_file():
        raise InputError(f"{bundle_dir}: no models/model.pt to export; train the bundle first (see its docs/README.md)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bundle_dir.resolve().name}_v{version}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, path in sorted(bundle_entries(bundle_dir).items()):
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return target
