"""Reading the project's bundles from local folders: configs through MONAI's ConfigParser, weights read safely.

Nothing here downloads anything. A bundle is usable only when its config and its weights are both on disk; the
app asks :func:`missing_parts` first and leaves out any model whose bundle is not complete, so that a network with
freshly initialised weights is never served as if it were trained.
"""

from __future__ import annotations

import hashlib
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


def file_sha256(path) -> str:
    """The SHA-256 of a file's content, in hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sidecar_path(weights) -> Path:
    """Where the app keeps what was chosen for fine-tuned ``weights`` (the refiner's ``min_change``): ``model.json``
    next to ``model.pt``."""
    return Path(weights).with_suffix(".json")


def _stamp(path: Path) -> tuple:
    # the inode too: a file put in place by rename (training's atomic publication) is new even with the same size
    # and modification time
    st = path.stat()
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def metadata(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class CachedNetwork:
    """The bundle's network with its weights, rebuilt only when the weights file changes (e.g. after training).

    ``path`` and ``sha256`` are those of the weights in the network :meth:`get` returned last: the SHA-256 is of the
    very bytes loaded (a file replaced while it was read is read again), so what was chosen for other weights can
    be told apart (:func:`sidecar_path`).
    """

    def __init__(self, config: dict, bundle_dir: Path, weights: list[Path], device: str):
        self.config, self.bundle_dir = config, Path(bundle_dir)
        self.candidates = [Path(w) for w in weights]  # first existing file wins
        self.device = torch.device(device)
        self._key = None
        self._net = None
        self.path: Path | None = None
        self.sha256: str | None = None

    def weights_path(self) -> Path:
        for path in self.candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"no weights file among {[str(p) for p in self.candidates]}")

    def get(self) -> torch.nn.Module:
        path = self.weights_path()
        key = _stamp(path)
        if key != self._key:
            for _ in range(5):
                before = key
                digest = file_sha256(path)
                net = build_network(make_parser(self.config, self.bundle_dir), path, self.device)
                key = _stamp(path)
                if key == before:  # the bytes hashed are the bytes loaded
                    break
            else:  # replaced on every try: unknown bytes, read again at the next request
                key = digest = None
            self._net, self._key, self.path, self.sha256 = net, key, path, digest
            logger.info(f"loaded {path} (SHA-256 {str(digest)[:12]}...) into {type(self._net).__name__}")
        return self._net


class CachedStageNetworks:
    """The X-ray -> CT cascade's later-stage networks (stages 2 and 3) with their weights, kept between requests.

    A chain request asks for each stage's network; its weights file is read only when the stage has not been loaded
    yet or the file changed since (another path, modification time or size: a file replaced by training or a
    deployment). One network per stage is kept: the old one is dropped before its replacement is loaded.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self._nets: dict[int, tuple[tuple, torch.nn.Module]] = {}
        self.loads = 0  # weights files read so far (logged; lets a test see that a request read none)

    def get(self, number: int, network: dict, ckpt) -> torch.nn.Module:
        """Stage ``number``'s :class:`PatchDenoiser` built with ``network`` (keyword arguments) and the weights in
        ``ckpt``, on the device, in eval mode."""
        from custom.xray2ct.inferer import load_stage_network

        path = Path(ckpt).resolve()
        try:
            st = path.stat()  # before reading: a file replaced while it is read gets a new key and is read again
        except OSError:
            path, st = Path(ckpt), None  # load_stage_network says what is missing and what to do
        # the inode too: a file put in place by rename (rsync, tar, an atomic deploy) with its old size and modification
        # time is new all the same
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size) if st else None
        key = (str(path), stamp, repr(sorted(network.items())))
        cached = self._nets.get(number)
        if st is not None and cached is not None and cached[0] == key:
            return cached[1]
        self._nets.pop(number, None)  # never two copies of a stage in memory, even while the new one loads
        net = load_stage_network(number, network, path, self.device)
        self._nets[number] = (key, net)
        self.loads += 1
        logger.info(f"loaded stage {number} weights {path}")
        return net

    def cached(self) -> dict:
        """{stage number: (weights path, (inode, mtime_ns, size))} of the networks held now."""
        return {number: key[:2] for number, (key, _) in self._nets.items()}
