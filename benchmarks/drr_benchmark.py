"""Forward + backward time of the DRR projector for two views, next to DiffDRR's trilinear renderer.

    python benchmarks/drr_benchmark.py                       # 64, 128, 256; DiffDRR if installed
    python benchmarks/drr_benchmark.py --sizes 64 128 --json out.json

Both renderers get the same chest phantom (mu in 1/mm), the same X2CT-GAN cone-beam geometry (source-to-isocentre
541 mm, source-to-detector 949 mm, 500 mm detector) with an N x N detector for an N^3 volume over a 320 mm cube,
both views (PA and lateral) in one call, and one sample per voxel along each ray (DiffDRR: ``n_points = N``).
Rays, sampling positions and DiffDRR's alpha range are computed before timing; each figure is the best of
``--repeats`` runs after one warm-up. Agreement is the relative L2 difference of the two images.

DiffDRR is optional: ``pip install --no-deps diffdrr==0.6.1 fastcore torchio pandas`` (its declared dependencies
would pull a CUDA build of torch). Only its renderer module is used, with rays we compute from our geometry.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from custom.core.physics import DRRProjector, get_geometry, hu_to_mu
from custom.core.physics.geometry import detector_axes, source_direction
from custom.datasets.phantom import chest_phantom


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def diffdrr_rays(geo, n: int, spacing: float):
    """Source and detector-pixel points in voxel index coordinates for the frontal and lateral views."""
    det = torch.arange(geo.detector_pixels, dtype=torch.float64) - (geo.detector_pixels - 1) / 2
    det = det * geo.detector_spacing
    sources, targets = [], []
    for angle in (0.0, 90.0):
        s = torch.tensor(source_direction(angle), dtype=torch.float64)
        e_u, e_v = (torch.tensor(e, dtype=torch.float64) for e in detector_axes(angle))
        src = geo.source_to_isocenter * s
        centre = -(geo.source_to_detector - geo.source_to_isocenter) * s
        pix = centre + det.view(-1, 1, 1) * e_u + det.view(1, -1, 1) * e_v  # (U, V, 3), u-major like ours
        sources.append(src.view(1, 3))
        targets.append(pix.reshape(-1, 3))
    to_idx = lambda p: p / spacing + (n - 1) / 2  # noqa: E731
    source = torch.stack([to_idx(s) for s in sources]).float()  # (2, 1, 3)
    target = torch.stack([to_idx(t) for t in targets]).float()  # (2, U*V, 3)
    ray_mm = ((torch.stack(targets) - torch.stack(sources)).norm(dim=-1)).unsqueeze(1).float()  # (2, 1, U*V)
    return source, target, ray_mm


def run(sizes, repeats: int, with_diffdrr: bool) -> list[dict]:
    rows = []
    try:
        if not with_diffdrr:
            raise ImportError
        from diffdrr.renderers import Trilinear, _get_alpha_minmax
    except ImportError:
        Trilinear = None
    for n in sizes:
        geo = get_geometry("x2ctgan", pixels=n)
        sp = 320.0 / n
        mu = hu_to_mu(chest_phantom(seed=0, size=n))
        vol = mu[None, None].clone().requires_grad_()
        proj = DRRProjector(geo, ("frontal", "lateral"))
        t = time.perf_counter()
        proj.plans(vol.shape[2:], (sp,) * 3, vol.device)
        plan_s = time.perf_counter() - t

        def ours():
            vol.grad = None
            out = proj(vol, (sp,) * 3)
            out.sum().backward()
            return out

        row = {"size": n, "detector": n, "ours_fwd_bwd_s": best_time(ours, repeats), "ours_plan_s": plan_s}
        with torch.no_grad():
            row["ours_fwd_s"] = best_time(lambda: proj(vol, (sp,) * 3), repeats)
        samples = 2 * n * n * n
        row["ours_samples_per_s"] = samples / row["ours_fwd_bwd_s"]
        img_ours = proj(vol.detach(), (sp,) * 3)[0]
        if Trilinear is not None:
            renderer = Trilinear()
            source, target, ray_mm = diffdrr_rays(geo, n, sp)
            dims = torch.tensor(vol.shape[2:]).float()
            amin, amax = _get_alpha_minmax(source, target, dims, renderer.voxel_shift, renderer.eps)
            amin, amax = amin.min(), amax.max()
            dvol = mu.clone().requires_grad_()

            def theirs():
                dvol.grad = None
                out = renderer(dvol, source, target, ray_mm, n_points=n, alphamin=amin, alphamax=amax)
                out.sum().backward()
                return out

            row["diffdrr_fwd_bwd_s"] = best_time(theirs, repeats)
            row["speedup"] = row["diffdrr_fwd_bwd_s"] / row["ours_fwd_bwd_s"]
            with torch.no_grad():
                img = renderer(mu, source, target, ray_mm, n_points=n, alphamin=amin, alphamax=amax)
            img = img.view(2, n, n)
            row["rel_l2_difference"] = float((img_ours - img).norm() / img.norm())
            row["max_abs_difference"] = float((img_ours - img).abs().max())
            row["max_line_integral"] = float(img.max())
        rows.append(row)
        print(json.dumps(row))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-diffdrr", action="store_true", help="time this project's projector only")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(info))
    rows = run(args.sizes, args.repeats, not args.no_diffdrr)
    print("\n| volume / detector | this project fwd+bwd | DiffDRR 0.6.1 fwd+bwd | speed-up | rel. L2 diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        theirs = f"{r['diffdrr_fwd_bwd_s']:.3f} s" if "diffdrr_fwd_bwd_s" in r else "n/a"
        ratio = f"{r['speedup']:.1f}x" if "speedup" in r else "n/a"
        diff = f"{100 * r['rel_l2_difference']:.2f}%" if "rel_l2_difference" in r else "n/a"
        print(f"| {r['size']}^3 / {r['detector']}^2 | {r['ours_fwd_bwd_s']:.3f} s | {theirs} | {ratio} | {diff} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
