"""PNG previews a person can open: radiographs side by side, CT orthogonal slices.

Arrays follow the project conventions (DRR ``[u, v]`` = column, row; CT canonical RAS ``[x, y, z]``); everything
here turns them into display images, radiological style: patient's right on the viewer's left, head at the top,
anterior at the top of axial slices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def xray_display(img, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(U, V) line integrals or radiograph -> (rows, cols) uint8, dense bright."""
    a = np.asarray(torch.as_tensor(img).detach().cpu().float()).squeeze()
    lo = float(np.percentile(a, 0.5)) if lo is None else lo
    hi = float(np.percentile(a, 99.5)) if hi is None else hi
    return _u8(a.T, lo, hi)


def ct_slices_display(ct_hu, window: Sequence[float] = (-1000.0, 1000.0), index=None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through the centre (or ``index`` = (i, j, k)) as uint8 images."""
    v = np.asarray(torch.as_tensor(ct_hu).detach().cpu().float()).squeeze()
    i, j, k = index if index is not None else (s // 2 for s in v.shape)
    lo, hi = window
    axial = _u8(v[::-1, ::-1, k].T, lo, hi)  # rows: anterior at top; cols: patient right on the left
    coronal = _u8(v[::-1, j, ::-1].T, lo, hi)  # rows: superior at top
    sagittal = _u8(v[i, ::-1, ::-1].T, lo, hi)  # cols: anterior on the left
    return [axial, coronal, sagittal]


def hstack(images: Sequence[np.ndarray], height: int | None = None, gap: int = 4) -> np.ndarray:
    """Concatenate greyscale images side by side, each resized to ``height`` rows."""
    from PIL import Image

    height = height or max(im.shape[0] for im in images)
    out = []
    for n, im in enumerate(images):
        w = max(1, int(round(im.shape[1] * height / im.shape[0])))
        out.append(np.asarray(Image.fromarray(im).resize((w, height), Image.BILINEAR)))
        if n < len(images) - 1:
            out.append(np.zeros((height, gap), dtype=np.uint8))
    return np.concatenate(out, axis=1)


def vstack(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    out = []
    for n, r in enumerate(rows):
        out.append(np.pad(r, ((0, 0), (0, width - r.shape[1]))))
        if n < len(rows) - 1:
            out.append(np.zeros((gap, width), dtype=np.uint8))
    return np.concatenate(out, axis=0)


def titled(panel: np.ndarray, titles: Sequence[str], widths: Sequence[int], gap: int = 4) -> np.ndarray:
    """``panel`` with a row of column titles on top; ``widths`` are the columns' widths in pixels (gaps between)."""
    from PIL import Image, ImageDraw

    bar = Image.new("L", (panel.shape[1], 16), 0)
    draw = ImageDraw.Draw(bar)
    x = 0
    for title, w in zip(titles, widths):
        draw.text((x + 2, 2), title, fill=255)
        x += w + gap
    return vstack([np.asarray(bar), panel])
