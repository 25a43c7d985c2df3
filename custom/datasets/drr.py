"""DRRs of a CT as files: the frontal and lateral line-integral images and a preview PNG."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.transforms import Orientation

from custom.core.io import save_png
from custom.core.physics import DRR, MU_WATER_70KEV
from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display
from custom.core.xray import save_xray

# Below this share of the detector's height covered by the CT, most of each DRR is empty: the X-rays do not look like
# radiographs of a chest, and a model trained on whole chests will not reconstruct them well.
MIN_COVERAGE = 0.5


def coverage_warning(ct, geometry) -> str | None:
    """A sentence when ``ct`` (1, X, Y, Z) covers much less of the DRR's height (the body axis, at the isocentre)
    than the detector sees, else None."""
    import numpy as np

    # from the header alone: the voxel axis that runs most along the body axis (S), its length in mm (reorienting
    # the volume to RAS for this copied all of its voxels)
    affine = np.asarray(ct.affine, dtype=np.float64)
    axis = int(np.argmax(np.abs(affine[2, :3])))
    height = float(np.linalg.norm(affine[:3, axis])) * int(ct.shape[1 + axis])
    covered = min(height / geometry.field_of_view, 1.0)
    if covered >= MIN_COVERAGE:
        return None
    return (
        f"the CT covers {height:.0f} mm along the body axis, {covered:.0%} of the {geometry.field_of_view:.0f} mm the "
        f"X-ray detector sees ({1 - covered:.0%} of each DRR shows no body); reconstructions from such DRRs are not "
        "comparable with whole-chest ones"
    )


def render_drrs(ct, geometry, mu_water=None):
    """Frontal and lateral line integrals (2, U, V) of a loaded CT in its own grid (RAS, native spacing)."""
    ras = Orientation(axcodes="RAS", labels=None)(ct)
    with torch.no_grad():
        return DRR(geometry, ("frontal", "lateral"), mu_water or MU_WATER_70KEV)(ras[None])[0], ras


def write_drr_outputs(drr, geometry, out_dir: Path, ct_hu=None) -> dict:
    """``frontal.nii.gz``, ``lateral.nii.gz`` and ``drr.png`` (views side by side, CT slices below if given)."""
    files = {}
    for i, view in enumerate(("frontal", "lateral")):
        files[view] = Path(out_dir) / f"{view}.nii.gz"
        save_xray(drr[i], geometry, files[view])
    rows = [hstack([xray_display(drr[0]), xray_display(drr[1])], height=320)]
    if ct_hu is not None:
        rows.append(hstack(ct_slices_display(ct_hu), height=214))
    files["png"] = Path(out_dir) / "drr.png"
    save_png(vstack(rows), files["png"])
    return {k: str(v) for k, v in files.items()}
