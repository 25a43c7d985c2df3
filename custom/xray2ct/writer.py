"""Writing reconstructed CTs: NIfTI in HU with a correct affine, the uncertainty map, and a comparison PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Events

from custom.core.cases import batch_item, case_name
from custom.core.io import save_json, save_nifti, save_png
from custom.core.transforms import cube_affine, window_to_hu
from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display


class ReconstructionWriter:
    """Ignite handler: after each iteration, write every case of the batch to ``output_dir/<case>/``.

    Files: ``ct.nii.gz`` (float32 HU, RAS affine, spacing ``cube_mm / D`` mm), ``uncertainty.nii.gz`` (voxelwise
    standard deviation over the samples, in HU), ``comparison.png`` (input X-rays and orthogonal slices) and
    ``ct.json`` (window, clipping note, sampling settings). Every file is written atomically.

    Args:
        output_dir: folder for the cases.
        window: the HU window of the model; outputs are clipped to it (at [-200, 200], lungs and bone are clipped:
            the sidecar says so).
        cube_mm: side of the reconstructed cube.
        inferer: the :class:`~custom.xray2ct.inferer.DDIMInferer` (its ``last_std`` is the uncertainty).
        settings: extra entries for ``ct.json`` (stage, steps, weights file...).
    """

    def __init__(self, output_dir, window: Sequence[float], cube_mm: float = 320.0, inferer=None, settings=None):
        self.output_dir = Path(output_dir)
        self.window = tuple(float(w) for w in window)
        self.cube_mm = float(cube_mm)
        self.inferer = inferer
        self.settings = dict(settings or {})
        self.count = 0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch
        std = getattr(self.inferer, "last_std", None)
        lo, hi = self.window
        for i, item in enumerate(items):
            pred = torch.as_tensor(item["pred"]).detach().float().cpu().reshape(item["pred"].shape[-3:])
            d = pred.shape[-1]
            info = batch_item(batch, i)
            case = self.output_dir / case_name(info, self.count)
            self.count += 1
            hu = window_to_hu(pred, self.window)
            affine = cube_affine(d, self.cube_mm)
            save_nifti(hu.numpy(), affine, case / "ct.nii.gz", description=f"CT HU clipped to [{lo:g},{hi:g}]")
            if std is not None:
                unc = std[i].detach().float().cpu().reshape(pred.shape) * (hi - lo) / 2
                save_nifti(unc.numpy(), affine, case / "uncertainty.nii.gz", description="sample std, HU")
            xray = torch.as_tensor(item["image"] if item.get("image") is not None else info["xray"]).detach().cpu()
            top = hstack([xray_display(xray[0]), xray_display(xray[1])], height=256)
            slices = hstack(ct_slices_display(hu, window=self.window), height=256)
            save_png(vstack([top, slices]), case / "comparison.png")
            save_json(
                {
                    "units": "HU",
                    "window": [lo, hi],
                    "clipping": (
                        f"values are clipped to [{lo:g}, {hi:g}] HU: lungs (about -850 HU), fat and air read as "
                        f"{lo:g}, bone as {hi:g}"
                    ),
                    "voxel_spacing_mm": self.cube_mm / d,
                    "cube_mm": self.cube_mm,
                    "orientation": "RAS",
                    "inputs": _inputs_record(info),
                    **self.settings,
                },
                case / "ct.json",
            )


def _inputs_record(item: dict) -> dict:
    """What the X-ray reader found and assumed about each input radiograph (file, view tag, pixel spacing and its
    source, warnings such as a missing spacing), so a reconstruction can be checked against its inputs."""
    record = {}
    for view in ("frontal", "lateral"):
        meta = item.get(f"{view}_meta")
        if isinstance(meta, dict):
            record[view] = {
                k: meta[k] for k in ("filename_or_obj", "view_position", "spacing", "warnings") if k in meta
            }
    warnings = [w for r in record.values() for w in str(r.get("warnings", "")).split("; ") if w]
    return {**record, "warnings": warnings}
