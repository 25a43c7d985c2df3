"""Evaluation and outputs of the CT detail refiners: coarse vs refined, per case and in summary.

Metrics follow :data:`custom.core.metrics.REFINEMENT_CONVENTION` (HU clipped to the window, PSNR with the window
width as data range, 3D SSIM, MAE in HU, sharpness ratio to the truth). Methods: ``refined`` (the network),
``coarse`` (its input, nearest-neighbour upsampled to the ground truth's size when smaller, i.e. the coarse voxels
as they are) and ``trilinear`` (the coarse input upsampled trilinearly; only when the coarse input is smaller than
the output).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events

from custom.core.cases import batch_item, case_name, claim_output
from custom.core.io import atomic_path, save_nifti, save_png, save_report
from custom.core.metrics import REFINEMENT_CONVENTION, REFINEMENT_METRICS, refinement_metrics
from custom.core.options import as_bool
from custom.core.transforms import cube_affine, finer_affine, window_to_hu
from custom.core.visualize import ct_slices_display, hstack, vstack


def comparison_image(coarse_hu, refined_hu, gt_hu, window: Sequence[float]) -> np.ndarray:
    """uint8 figure: rows axial / coronal / sagittal; columns coarse | refined | ground truth | |coarse - gt| |
    |refined - gt| (errors on a 0 to window-width/2 grey scale). Without ground truth: coarse | refined."""
    lo, hi = (float(w) for w in window)
    cols = [ct_slices_display(coarse_hu, window), ct_slices_display(refined_hu, window)]
    if gt_hu is not None:
        g = gt_hu.clamp(lo, hi)
        err_range = (0.0, (hi - lo) / 2)
        cols.append(ct_slices_display(gt_hu, window))
        cols.append(ct_slices_display((coarse_hu.clamp(lo, hi) - g).abs(), err_range))
        cols.append(ct_slices_display((refined_hu.clamp(lo, hi) - g).abs(), err_range))
    rows = [hstack([c[p] for c in cols], height=192) for p in range(3)]
    return vstack(rows)


def _to_size(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    if tuple(x.shape[-3:]) == tuple(size):
        return x
    kw = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(x[None, None].float(), size=tuple(size), mode=mode, **kw)[0, 0]


class RefinementWriter:
    """Ignite handler of the refiners' evaluator: metrics per case and, optionally, the per-case files.

    Reads each decollated output item's ``image`` (coarse CT), ``pred`` (refined CT) and ``label`` (ground truth,
    optional), all (1, D, H, W), in HU or in window units (``units``). At the end of the run
    writes ``metrics.csv`` (one row per case and method), ``summary.json`` (means per method, number of cases,
    convention) and ``metrics.txt`` (the same as a readable table) to ``output_dir``.

    With ``save_volumes``: ``<case>/coarse.nii.gz``, ``refined.nii.gz``, ``ground_truth.nii.gz`` (when known), and
    with ``save_figures`` ``<case>/<case>_comparison.png`` (:func:`comparison_image`). Every file is written
    atomically.

    Args:
        output_dir: output folder.
        window: the HU window (metrics and figures).
        cube_mm: side of the CT cube in mm (NIfTI affine).
        save_volumes, save_figures: write the per-case files.
        units: ``"hu"`` (the evaluator's postprocessing already mapped to HU) or ``"window"`` ([-1, 1]).
        overwrite: replace the files of a case of the same name already in ``output_dir`` (otherwise refused).
    """

    def __init__(
        self,
        output_dir,
        window: Sequence[float] = (-200.0, 200.0),
        cube_mm: float = 320.0,
        save_volumes: bool = True,
        save_figures: bool = True,
        units: str = "hu",
        overwrite: bool = False,
    ):
        if units not in ("hu", "window"):
            raise ValueError(f"units must be 'hu' or 'window', got {units!r}")
        self.units = units
        self.output_dir = Path(output_dir)
        self.window = tuple(float(w) for w in window)
        self.cube_mm = float(cube_mm)
        self.save_volumes, self.save_figures = bool(save_volumes), bool(save_figures)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.rows: list = []
        self.count = 0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def _reset(self, engine=None) -> None:
        self.rows, self.count = [], 0

    def __call__(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for i, item in enumerate(items):
            info = batch_item(engine.state.batch, i)
            name = case_name(info, self.count)
            self.count += 1
            self.add_case(name, item["image"], item["pred"], item.get("label"), info.get("coarse_affine"))

    def _hu(self, x) -> torch.Tensor:
        x = torch.as_tensor(x).detach().float().cpu()
        x = x.reshape(x.shape[-3:])
        return window_to_hu(x, self.window) if self.units == "window" else x

    def add_case(self, name: str, coarse, refined, gt=None, coarse_affine=None) -> None:
        """Score one case (volumes in ``units``) and write its files.

        ``coarse_affine``: where the coarse CT lies (a coarse CT read from a file); the refined CT gets the affine
        that covers the same field of view. Without it, both lie on the ``cube_mm`` cube centred on the origin.
        """
        refined, coarse = self._hu(refined), self._hu(coarse)
        if gt is not None:
            if torch.as_tensor(gt).numel() != refined.numel():
                raise ValueError(f"ground truth {tuple(gt.shape)} and refined CT {tuple(refined.shape)} differ in size")
            gt = self._hu(gt)
        size = refined.shape
        coarse_up = _to_size(coarse, size, "nearest")
        if gt is not None:
            self.rows.append({"case_id": name, "method": "refined", **refinement_metrics(refined, gt, self.window)})
            self.rows.append({"case_id": name, "method": "coarse", **refinement_metrics(coarse_up, gt, self.window)})
            if coarse.shape != size:
                tri = _to_size(coarse, size, "trilinear")
                self.rows.append({"case_id": name, "method": "trilinear", **refinement_metrics(tri, gt, self.window)})
        folder = self.output_dir / name
        if self.save_volumes or self.save_figures:
            claim_output(folder, self.overwrite)
        lo, hi = self.window
        if self.save_volumes:
            note = f"HU clipped to [{lo:g},{hi:g}]"
            if coarse_affine is None:
                coarse_affine = cube_affine(coarse.shape[-1], self.cube_mm)
            coarse_affine = np.asarray(torch.as_tensor(coarse_affine).cpu(), dtype=np.float64).reshape(4, 4)
            affine = finer_affine(coarse_affine, coarse.shape, size)
            save_nifti(coarse.numpy(), coarse_affine, folder / "coarse.nii.gz", description=note)
            save_nifti(refined.numpy(), affine, folder / "refined.nii.gz", description=note)
            if gt is not None:
                save_nifti(gt.numpy(), affine, folder / "ground_truth.nii.gz", description=note)
        if self.save_figures:
            save_png(comparison_image(coarse_up, refined, gt, self.window), folder / f"{name}_comparison.png")

    def summary(self) -> dict:
        lo, hi = self.window
        out = {"convention": REFINEMENT_CONVENTION.format(window=[lo, hi], range=hi - lo)}
        out["cases"] = len({r["case_id"] for r in self.rows})
        for method in dict.fromkeys(r["method"] for r in self.rows):
            sel = [r for r in self.rows if r["method"] == method]
            out[method] = {k: float(np.mean([r[k] for r in sel])) for k in REFINEMENT_METRICS}
        if "refined" in out and "coarse" in out:
            out["refined_minus_coarse_psnr_db"] = out["refined"]["psnr_hu"] - out["coarse"]["psnr_hu"]
        if "refined" in out and "trilinear" in out:
            out["refined_minus_trilinear_psnr_db"] = out["refined"]["psnr_hu"] - out["trilinear"]["psnr_hu"]
        return out

    def write_summary(self, engine=None) -> dict:
        summary = self.summary()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.rows:
            save_report(self.rows, summary, self.output_dir)
        lines = [summary["convention"], f"cases with ground truth: {summary['cases']}", ""]
        methods = [m for m in ("coarse", "trilinear", "refined") if m in summary]
        if methods:
            lines.append(f"{'method':<10} {'PSNR (dB)':>10} {'SSIM':>8} {'MAE (HU)':>9} {'sharpness':>10}")
            for m in methods:
                s = summary[m]
                lines.append(
                    f"{m:<10} {s['psnr_hu']:>10.2f} {s['ssim']:>8.4f} {s['mae_hu']:>9.2f} {s['sharpness']:>10.3f}"
                )
            for key in ("refined_minus_coarse_psnr_db", "refined_minus_trilinear_psnr_db"):
                if key in summary and math.isfinite(summary[key]):
                    lines.append(f"{key}: {summary[key]:+.2f}")
        else:
            lines.append("no ground truth: no metrics")
        with atomic_path(self.output_dir / "metrics.txt", suffix=".txt") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return summary
