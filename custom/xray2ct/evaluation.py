"""Held-out evaluation of X-ray -> CT reconstructions, with the metric convention stated next to every number.

Convention (``CONVENTION``): prediction and ground truth are compared in HU after clipping both to the training
window (default [-200, 200] HU); PSNR uses the window width as data range (400 HU); SSIM is 3D (MONAI
``SSIMMetric``, Gaussian window 7) on the same clipped HU with the same data range; MAE is in HU; the DRR
re-projection error is the mean absolute difference of frontal and lateral DRRs (line integral / 8) of the
prediction and of the ground truth, both rendered from the windowed volumes. Every figure is a mean over cases.

Baselines: ``mean_ct``, the voxelwise mean of the training CTs (no X-ray used); ``backprojection``, the two X-rays
averaged back along their rays (the adjoint of the DRR projector) and mapped to HU by a linear fit on the
training cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from custom.core.io import save_report
from custom.core.metrics import METRICS, case_metrics, convention
from custom.core.physics import DRRProjector, get_geometry
from custom.core.transforms import hu_to_window, window_to_hu
from custom.core.xray import LoadXRayd


def load_case(entry: dict, base_dir, volume_size: int, xray_size: int, geometry="x2ctgan"):
    """(xray (2, N, N) network units, ct_hu (D, D, D)) of a datalist entry, through the training transforms' path."""
    from monai.transforms import LoadImage, Resize

    base = Path(base_dir)
    ct = LoadImage(reader="NibabelReader", image_only=True)(str(base / entry["ct"]))[None]
    ct = Resize((volume_size,) * 3, mode="area")(ct)[0]  # area: no zero (water) padding at the border
    views = {k: str(base / entry[k]) for k in ("frontal", "lateral")}
    views = LoadXRayd(list(views), geometry, xray_size, check_views=False)(views)
    xray = torch.cat([views["frontal"], views["lateral"]]).float()
    return xray, torch.as_tensor(ct).float()


class BackprojectionBaseline:
    """Average of the two X-rays along their rays, mapped to HU by least squares on training cases."""

    def __init__(self, geometry="x2ctgan", cube_mm: float = 320.0):
        self.geometry = get_geometry(geometry) if isinstance(geometry, str) else geometry
        self.cube_mm = float(cube_mm)
        self.coef = (1.0, 0.0)
        self._cache: dict = {}

    def volume(self, xray: torch.Tensor, d: int) -> torch.Tensor:
        n = xray.shape[-1]
        key = (n, d)
        if key not in self._cache:  # the projector plans and the ray weights depend on sizes only
            proj = DRRProjector(self.geometry.resized(n))
            shape, sp = (d,) * 3, (self.cube_mm / d,) * 3
            self._cache[key] = (proj, proj.backproject(torch.ones(1, 2, n, n), shape, sp).clamp(min=1e-6))
        proj, w = self._cache[key]
        bp = proj.backproject(xray[None].float(), (d,) * 3, (self.cube_mm / d,) * 3)
        return (bp / w).mean(dim=1)[0]

    def fit(self, pairs):
        xs, ys = [], []
        for xray, ct in pairs:
            xs.append(self.volume(xray, ct.shape[-1]).reshape(-1))
            ys.append(ct.reshape(-1))
        x, y = torch.cat(xs).double(), torch.cat(ys).double()
        a = torch.stack([x, torch.ones_like(x)], dim=1)
        sol = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
        self.coef = (float(sol[0]), float(sol[1]))
        return self

    def __call__(self, xray: torch.Tensor, d: int) -> torch.Tensor:
        return self.volume(xray, d) * self.coef[0] + self.coef[1]


def evaluate(
    reconstruct,
    cases: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    train_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    window=(-200.0, 200.0),
    geometry="x2ctgan",
    cube_mm: float = 320.0,
    out_dir=None,
    extra: dict | None = None,
) -> dict:
    """Metrics of ``reconstruct(case_id, xray) -> ct_hu`` on ``cases`` [(case_id, xray, ct_hu)], and of the two
    baselines when ``train_pairs`` [(xray, ct_hu)] are given to fit them.

    Writes ``metrics.csv`` (per case and method) and ``summary.json`` (with ``extra`` added) to ``out_dir`` when
    given; returns (summary, rows).
    """
    d = cases[0][2].shape[-1]
    geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
    drr = DRRProjector(geo.resized(d))
    methods = {"model": reconstruct}
    if train_pairs:
        mean_ct = torch.stack([window_to_hu(hu_to_window(ct, window), window) for _, ct in train_pairs]).mean(0)
        bp = BackprojectionBaseline(geometry, cube_mm).fit(train_pairs)
        methods["mean_ct"] = lambda case_id, xray: mean_ct
        methods["backprojection"] = lambda case_id, xray: bp(xray, d)
    rows = []
    for case_id, xray, ct in cases:
        for name, fn in methods.items():
            with torch.no_grad():
                pred = fn(case_id, xray)
            rows.append({"case_id": case_id, "method": name, **case_metrics(pred, ct, window, drr, cube_mm)})
    summary = {"convention": convention(window), "cases": len(cases)}
    for name in methods:
        sel = [r for r in rows if r["method"] == name]
        summary[name] = {k: float(np.mean([r[k] for r in sel])) for k in METRICS}
    summary.update(extra or {})
    if out_dir is not None:
        save_report(rows, summary, out_dir)
    return summary, rows


def _stage_size(stage: dict) -> int:
    return int(stage["inferer"].volume_size)


def _with_steps(inferer, steps: int):
    """A copy of a :class:`DDIMInferer`'s settings with another number of DDIM steps (same seed, tiles, samples)."""
    from custom.xray2ct.inferer import DDIMInferer

    return DDIMInferer(
        inferer.volume_size,
        inferer.sampler.num_train_timesteps,
        int(steps),
        num_samples=inferer.num_samples,
        seed=inferer.seed,
        roi_size=inferer.roi_size,
        overlap=inferer.overlap,
        sw_batch_size=inferer.sw_batch_size,
        start_strength=inferer.sampler.strength,
    )


def evaluate_cascade(
    stages: Sequence[dict],
    cases: Sequence[tuple[str, str, object]],
    window=(-200.0, 200.0),
    steps_curve: Sequence[int] = (),
    out_dir=None,
    extra: dict | None = None,
    device="cpu",
    paths: dict | None = None,
    path_size: int = 256,
) -> tuple[dict, list]:
    """Per-stage held-out metrics of the chained cascade, each stage next to trilinear upsampling of the previous
    stage's actual (sampled) output, the input that stage really gets: nothing here is teacher-forced.

    Args:
        stages: the stages that run, in order, as :class:`custom.xray2ct.inferer.CascadeInferer` takes them
            (``network``, ``inferer``, ``xray_size``); stage 1's network must be set.
        cases: (case_id, group, load) per case, ``load(volume_size, xray_size) -> (xray (2, N, N), ct_hu (D, D, D))``
            (:func:`load_case` bound to a datalist entry); ``group`` names the data set (``phantoms``, ``real``).
        window: HU window of the metrics and of the networks' units.
        steps_curve: DDIM steps to score each stage at besides its own default, on the same previous-stage output
            (the chain goes on with the default).
        out_dir: writes ``metrics.csv`` (per case, stage and method) and ``summary.json`` there when given.
        paths: other ways from stage 1's output to ``path_size``^3, by name: ``fn(stage1, xray) -> volume``, the
            volumes (1, 1, D, D, D) in the networks' units, ``xray`` stage 1's X-rays (1, 2, N, N) (e.g. CT
            refiners). With ``paths`` (even empty)
            every case is also scored at ``path_size``^3 along each way there, on the same stage-1 sample: stage 1
            + trilinear, the chain's last stage when it has that size, and each of ``paths``.
        path_size: the size the ways of ``paths`` end at.

    Returns:
        (summary, rows). ``summary["stages"][stage][group][method]`` holds the mean PSNR/SSIM/MAE/sharpness and
        seconds; for stages after the first, ``gain_db`` (model minus trilinear, per case: mean and minimum) and
        ``cases_worse_by_0.5dB``. With ``paths``, ``summary["paths"][group][path]`` holds the same means for each
        way to ``path_size``^3, with ``seconds`` (from the X-rays, stage 1 included) and ``gain_db`` over stage
        1 + trilinear; their rows have a ``path`` and no ``stage``.
    """
    import time

    import torch.nn.functional as F

    from custom.core.metrics import refinement_metrics

    rows = []
    dev = torch.device(device)
    for case_id, group, load in cases:
        prev, outputs, spent = None, [], []
        for number, stage in enumerate(stages, start=1):
            d, n = _stage_size(stage), int(stage["xray_size"])
            xray, gt = load(d, n)
            xray, gt = xray[None].to(dev), gt.to(dev)  # metrics at 256^3 are slow on a CPU; keep them with the data
            if number == 1:
                first_xray = xray
            base = {"case_id": case_id, "group": group, "stage": number, "volume": d}
            if prev is not None:
                t0 = time.perf_counter()
                up = F.interpolate(prev, size=(d,) * 3, mode="trilinear", align_corners=False)
                seconds = up_seconds = time.perf_counter() - t0
                hu = window_to_hu(up[0, 0].float(), window)
                rows.append({**base, "method": "trilinear", "steps": 0, **refinement_metrics(hu, gt, window)})
                rows[-1]["seconds"] = seconds
            else:
                up, up_seconds = None, 0.0
            inferer = stage["inferer"]
            default = inferer.sampler.num_inference_steps
            for steps in [default] + [s for s in steps_curve if s != default]:
                run = inferer if steps == default else _with_steps(inferer, steps)
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = run(xray, stage["network"], prev=up)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                hu = window_to_hu(out[0, 0].float(), window)
                method = "model" if steps == default else f"model_{steps}_steps"
                rows.append({**base, "method": method, "steps": steps, **refinement_metrics(hu, gt, window)})
                rows[-1]["seconds"] = seconds
                if steps == default:
                    chained, chained_seconds = out, seconds
            prev = chained
            outputs.append(chained)
            spent.append(chained_seconds + up_seconds)
        if paths is not None:
            same = path_size == _stage_size(stages[0])  # then stage 1 is scored as it is
            ways = {"stage 1" if same else "stage 1 + trilinear": _trilinear_to(path_size)}
            if len(stages) > 1 and _stage_size(stages[-1]) == path_size:
                ways[f"stages 1-{len(stages)}"] = None
            ways.update(paths)
            _, gt = load(path_size, int(stages[0]["xray_size"]))
            gt = gt.to(dev)
            for name, way in ways.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = outputs[-1] if way is None else way(outputs[0], first_xray)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                seconds = sum(spent) if way is None else spent[0] + time.perf_counter() - t0
                hu = window_to_hu(out[0, 0].float(), window)
                row = {"case_id": case_id, "group": group, "path": name, "volume": path_size}
                rows.append({**row, **refinement_metrics(hu, gt, window), "seconds": seconds})
    summary = summarize_stages([r for r in rows if "path" not in r], window)
    if paths is not None:
        summary["paths"] = summarize_paths([r for r in rows if "path" in r])
    summary.update(extra or {})
    if out_dir is not None:
        save_report(rows, summary, out_dir)
    return summary, rows


def _trilinear_to(size: int):
    import torch.nn.functional as F

    return lambda x, xray=None: F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)


def summarize_paths(rows: Sequence[dict]) -> dict:
    """Means per group and way of the ``path`` rows of :func:`evaluate_cascade`, with each way's PSNR gain over
    the first way (stage 1, with trilinear upsampling when the ways end larger) per case (mean, minimum, cases worse
    by more than 0.5 dB)."""
    from custom.core.metrics import REFINEMENT_METRICS

    out = {}
    first = rows[0]["path"] if rows else None
    for group in dict.fromkeys(r["group"] for r in rows):
        sel = [r for r in rows if r["group"] == group]
        base = {r["case_id"]: r["psnr_hu"] for r in sel if r["path"] == first}
        ways = {}
        for name in dict.fromkeys(r["path"] for r in sel):
            m = [r for r in sel if r["path"] == name]
            ways[name] = {k: float(np.mean([r[k] for r in m])) for k in REFINEMENT_METRICS + ("seconds",)}
            gain = [r["psnr_hu"] - base[r["case_id"]] for r in m if r["case_id"] in base]
            if gain and name != first:
                ways[name]["gain_db"] = {"mean": float(np.mean(gain)), "min": float(np.min(gain))}
                ways[name]["cases_worse_by_0.5dB"] = int(sum(g < -0.5 for g in gain))
        out[group] = ways
    return out


def summarize_stages(rows: Sequence[dict], window=(-200.0, 200.0)) -> dict:
    """Means per stage, group and method of per-stage rows (:func:`evaluate_cascade`, :func:`score_stage_files`),
    with each stage's PSNR gain over trilinear upsampling of its input, per case (mean, minimum, cases worse by
    more than 0.5 dB)."""
    from custom.core.metrics import REFINEMENT_CONVENTION, REFINEMENT_METRICS

    summary = {
        "convention": convention(window, REFINEMENT_CONVENTION),
        "cases": len({r["case_id"] for r in rows}),
        "previous_stage": "the sampled output of the real previous stage (not teacher-forced)",
        "stages": {},
    }
    for number in sorted({r["stage"] for r in rows}):
        per_group = {}
        for group in dict.fromkeys(r["group"] for r in rows):
            sel = [r for r in rows if r["stage"] == number and r["group"] == group]
            methods = {}
            for method in dict.fromkeys(r["method"] for r in sel):
                m = [r for r in sel if r["method"] == method]
                keys = REFINEMENT_METRICS + (("seconds",) if all("seconds" in r for r in m) else ())
                methods[method] = {k: float(np.mean([r[k] for r in m])) for k in keys}
                methods[method]["steps"] = m[0].get("steps")
            tri = {r["case_id"]: r["psnr_hu"] for r in sel if r["method"] == "trilinear"}
            gain = [r["psnr_hu"] - tri[r["case_id"]] for r in sel if r["method"] == "model" and r["case_id"] in tri]
            if gain:
                methods["gain_db"] = {"mean": float(np.mean(gain)), "min": float(np.min(gain))}
                methods["cases_worse_by_0.5dB"] = int(sum(g < -0.5 for g in gain))
            per_group[group] = methods
        summary["stages"][str(number)] = per_group
    return summary


def score_stage_files(case_dir, case_id: str, group: str, load, window=(-200.0, 200.0)) -> list[dict]:
    """Per-stage rows, as :func:`evaluate_cascade` makes them, of the files one chained inference run wrote:
    ``ct_stage<k>.nii.gz`` (or ``ct.nii.gz`` when stage 1 ran alone) against the truth at each stage's size
    (``load(volume_size) -> ct_hu``), and from stage 2 on trilinear upsampling of the previous stage's file."""
    import torch.nn.functional as F
    from monai.transforms import LoadImage

    from custom.core.metrics import refinement_metrics

    case = Path(case_dir)
    files = sorted(case.glob("ct_stage*.nii.gz"), key=lambda p: int(p.name[len("ct_stage") : -len(".nii.gz")]))
    files = files or [case / "ct.nii.gz"]
    read = LoadImage(image_only=True)
    rows, prev = [], None
    for number, path in enumerate(files, start=1):
        vol = torch.as_tensor(read(str(path))).float()
        d = vol.shape[-1]
        gt = load(d)
        base = {"case_id": case_id, "group": group, "stage": number, "volume": d}
        if prev is not None:
            up = F.interpolate(prev[None, None], size=(d,) * 3, mode="trilinear", align_corners=False)[0, 0]
            rows.append({**base, "method": "trilinear", **refinement_metrics(up, gt, window)})
        rows.append({**base, "method": "model", **refinement_metrics(vol, gt, window)})
        prev = vol
    return rows
