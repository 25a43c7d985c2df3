"""Regenerate the README figures: ``python docs/make_figures.py`` (after ``python -m custom sample-data``).

docs/images/phantoms.png: four phantoms (axial and coronal slices, frontal and lateral DRRs, X2CT-GAN geometry).
docs/images/real_ct.png: the same for the real chest CT (data/sample/cxr.nii.gz), prepared at 128^3.
"""

import sys
from pathlib import Path

from custom.core.ct import load_ct
from custom.core.io import save_png
from custom.core.physics import DRR, get_geometry
from custom.core.transforms import preprocess_ct
from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display
from custom.datasets.phantom import chest_phantom


def row(hu, geo):
    drr = DRR(geo)(hu.reshape(1, 1, *hu.shape[-3:]), (320.0 / hu.shape[-1],) * 3)[0]
    return hstack(ct_slices_display(hu)[:2] + [xray_display(drr[0]), xray_display(drr[1])], height=160)


def main(sample_ct="data/sample/cxr.nii.gz", out="docs/images"):
    geo = get_geometry("x2ctgan", 128)
    save_png(vstack([row(chest_phantom(s, 128), geo) for s in range(100000, 100004)]), Path(out) / "phantoms.png")
    if Path(sample_ct).is_file():
        save_png(row(preprocess_ct(load_ct(sample_ct), 128)[0], geo), Path(out) / "real_ct.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
