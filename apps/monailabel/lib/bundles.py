"""Reading the project's bundles from local folders: configs through MONAI's ConfigParser, weights read safely.

Nothing here downloads anything. A bundle is usable only when its config and its weights are both on disk; the
app asks :func:`missing_parts` first and leaves out any model whose bundle is not complete, so that a network with
freshly initialised weights is never served as if it were trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from custom.core.bundle import build_network, make_parser

logger = logging.getLogger(__name__)

CONFIG = "configs/inference.json"
WEIGHTS = "models/model.pt"


def missing_parts(bundle_dir: Path, extra_weights: Path | None = None) -> str | None:
    """Why ``bundle_dir`` cannot be served yet (a sentence), or None when its inference config and weights exist.

    ``extra_weights`` (fine-tuned weights kept by the app) stands in for the bundle's own weights when present.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        return f"the bundle folder {bundle_dir} does not exist"
    if not (bundle_dir / CONFIG).is_file():
        return f"{bundle_dir} has no {CONFIG}"
    if not (bundle_dir / WEIGHTS).is_file() and not (extra_weights and Path(extra_weights).is_file()):
        return f"{bundle_dir} has no trained weights ({WEIGHTS})"
    return None


def metadata(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class CachedNetwork:
    """The bundle's network with its weights, rebuilt only when the weights file changes (e.g. after training)."""

    def __init__(self, config: dict, bundle_dir: Path, weights: list[Path], device: str):
        self.config, self.bundle_dir = config, Path(bundle_dir)
        self.candidates = [Path(w) for w in weights]  # first existing file wins
        self.device = torch.device(device)
        self._key = None
        self._net = None

    def weights_path(self) -> Path:
        for path in self.candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"no weights file among {[str(p) for p in self.candidates]}")

    def get(self) -> torch.nn.Module:
        path = self.weights_path()
        key = (str(path), path.stat().st_mtime_ns)
        if key != self._key:
            self._net = build_network(make_parser(self.config, self.bundle_dir), path, self.device)
            self._key = key
            logger.info(f"loaded {path} into {type(self._net).__name__}")
        return self._net
