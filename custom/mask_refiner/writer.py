"""Writing refined masks."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Events

from custom.core.cases import batch_item
from custom.core.io import save_png
from custom.core.options import as_float
from custom.mask_refiner.data import MASK_THRESHOLD


class MaskWriter:
    """Ignite handler for the mask refiner: ``<case>_mask.png`` (0/255) and ``<case>_overlay.png`` per image.

    The overlay shows the image in grey, the refined mask in red and the coarse mask's outline in yellow.

    Args:
        output_dir: output folder.
        threshold: probability above which a pixel is foreground.
    """

    def __init__(self, output_dir, threshold: float = MASK_THRESHOLD):
        self.output_dir = Path(output_dir)
        self.threshold = as_float(threshold, "threshold", 0.0, 1.0, hint=" (a probability)")

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        import numpy as np
        from scipy import ndimage

        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for i, item in enumerate(items):
            info = batch_item(engine.state.batch, i)
            name = str(info.get("case_id") or f"case_{i:04d}")
            prob = torch.sigmoid(torch.as_tensor(item["pred"]).float()).cpu().numpy().reshape(item["pred"].shape[-2:])
            x = torch.as_tensor(item["image"]).float().cpu().numpy()
            mask = prob > self.threshold
            save_png((mask * 255).astype(np.uint8), self.output_dir / f"{name}_mask.png")
            grey = np.clip(x[2] / max(float(x[2].max()), 1e-6), 0, 1)
            rgb = np.stack([grey] * 3, axis=-1)
            rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.0, 0.0])
            coarse = x[1] > self.threshold
            edge = coarse & ~ndimage.binary_erosion(coarse)
            rgb[edge] = [1.0, 1.0, 0.0]
            save_png((rgb * 255).astype(np.uint8), self.output_dir / f"{name}_overlay.png")
