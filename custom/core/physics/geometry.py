"""Projection geometry: beam type, detector, source distances and view angles.

Coordinates follow the canonical CT array (MONAI ``Orientation("RAS")``): axis 0 runs to the patient's right (x),
axis 1 to anterior (y), axis 2 to superior (z), and the isocentre is the centre of the volume.

A view is a rotation of source and detector about the superior-inferior (z) axis by ``angle`` degrees:

* 0 degrees, ``frontal``: posterior-anterior (PA), source behind the patient, detector in front.
* 90 degrees, ``lateral``: left lateral, source at the patient's right, detector at the left.

Detector images are indexed ``[u, v]`` like MONAI's 2D images (and PNGs loaded by MONAI): ``u`` is the display
column (left to right), ``v`` the display row (top to bottom). The frontal image shows the patient's right on
the viewer's left and the head at the top, as a radiologist reads a PA film; the lateral image shows anterior on
the left and posterior (spine) on the right.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence, Union

VIEW_ANGLES = {"frontal": 0.0, "pa": 0.0, "lateral": 90.0}

# configs/ of the project, next to the package.
PRESET_FILE = Path(__file__).resolve().parents[3] / "configs" / "drr_geometry.json"


def view_angle(view: Union[str, float, int]) -> float:
    """Angle in degrees of a named view (``frontal``, ``pa``, ``lateral``) or of a number."""
    if isinstance(view, str):
        key = view.strip().lower()
        if key in VIEW_ANGLES:
            return VIEW_ANGLES[key]
        try:
            return float(key)
        except ValueError:
            raise ValueError(f"unknown view {view!r}: use 'frontal', 'lateral' or an angle in degrees") from None
    return float(view)


@dataclass(frozen=True)
class ProjectionGeometry:
    """A square flat-panel detector and a parallel or point (cone-beam) source.

    Args:
        beam: ``"parallel"`` or ``"cone"``.
        detector_pixels: pixels along each side of the square detector.
        detector_spacing: pixel pitch on the detector plane, in mm.
        source_to_isocenter: source to rotation centre distance in mm (cone beam only).
        source_to_detector: source to detector-plane distance in mm (cone beam only).

    The detector is centred on the ray through the isocentre. For a parallel beam the detector plane passes through
    the isocentre and its pitch is the pitch at the isocentre.
    """

    beam: str
    detector_pixels: int
    detector_spacing: float
    source_to_isocenter: float | None = None
    source_to_detector: float | None = None

    def __post_init__(self):
        if self.beam not in ("parallel", "cone"):
            raise ValueError(f"beam must be 'parallel' or 'cone', got {self.beam!r}")
        if isinstance(self.detector_pixels, (tuple, list)):
            raise ValueError(
                f"the detector must be square (both views feed square 2D encoders): got {self.detector_pixels}; "
                "give one integer for detector_pixels"
            )
        if int(self.detector_pixels) != self.detector_pixels or self.detector_pixels < 2:
            raise ValueError(f"detector_pixels must be an integer >= 2, got {self.detector_pixels}")
        object.__setattr__(self, "detector_pixels", int(self.detector_pixels))
        if not self.detector_spacing > 0:
            raise ValueError(f"detector_spacing must be positive (mm), got {self.detector_spacing}")
        if self.beam == "cone":
            sid, sdd = self.source_to_isocenter, self.source_to_detector
            if sid is None or sdd is None or not (0 < sid < sdd):
                raise ValueError(
                    "a cone beam needs 0 < source_to_isocenter < source_to_detector (mm), " f"got {sid} and {sdd}"
                )

    @property
    def magnification(self) -> float:
        """Detector-plane size of an object at the isocentre divided by its true size."""
        if self.beam == "parallel":
            return 1.0
        return self.source_to_detector / self.source_to_isocenter

    @property
    def detector_extent(self) -> float:
        """Side length of the detector in mm."""
        return self.detector_pixels * self.detector_spacing

    @property
    def field_of_view(self) -> float:
        """Side length in mm of the detector projected back to the isocentre."""
        return self.detector_extent / self.magnification

    def resized(self, pixels: int) -> "ProjectionGeometry":
        """Same physical detector with ``pixels`` per side (the pitch changes, the field of view does not)."""
        if isinstance(pixels, (tuple, list)):
            raise ValueError(f"the detector must be square: got {pixels}; give one integer")
        return replace(self, detector_pixels=int(pixels), detector_spacing=self.detector_extent / int(pixels))

    def to_dict(self) -> dict:
        return asdict(self)


def _geometry_from_entry(name: str, entry: dict, pixels: int | None) -> ProjectionGeometry:
    entry = dict(entry)
    entry.pop("description", None)
    extent = entry.pop("detector_extent")
    n = int(entry.pop("detector_pixels"))
    geometry = ProjectionGeometry(detector_pixels=n, detector_spacing=extent / n, **entry)
    return geometry.resized(pixels) if pixels is not None else geometry


def load_presets(path: Union[str, Path, None] = None) -> dict:
    """The named geometries of ``configs/drr_geometry.json`` (or of ``path``) as raw dictionaries."""
    path = Path(path) if path is not None else PRESET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"geometry preset file not found: {path}")
    with open(path) as f:
        presets = json.load(f)
    return {k: v for k, v in presets.items() if not k.startswith("_")}


def get_geometry(name: str = "x2ctgan", pixels: int | None = None, preset_file=None) -> ProjectionGeometry:
    """A preset geometry by name (``parallel``, ``cone``, ``x2ctgan``, ...), optionally with ``pixels`` per side.

    ``name`` may also be the path of a JSON file holding one geometry entry.
    """
    if str(name).endswith(".json") and Path(name).is_file():
        with open(name) as f:
            return _geometry_from_entry(str(name), json.load(f), pixels)
    presets = load_presets(preset_file)
    if name not in presets:
        raise ValueError(f"unknown geometry {name!r}: choose one of {sorted(presets)} or give a JSON file")
    return _geometry_from_entry(name, presets[name], pixels)


def source_direction(angle_deg: float) -> tuple[float, float, float]:
    """Unit vector from the isocentre towards the source for a view at ``angle_deg``."""
    a = math.radians(angle_deg)
    return (math.sin(a), -math.cos(a), 0.0)


def detector_axes(angle_deg: float) -> tuple[Sequence[float], Sequence[float]]:
    """Unit vectors of increasing detector column ``u`` and row ``v`` in patient coordinates."""
    a = math.radians(angle_deg)
    e_u = (-math.cos(a), -math.sin(a), 0.0)
    e_v = (0.0, 0.0, -1.0)
    return e_u, e_v
