"""Writing reconstructed CTs: NIfTI in HU with a correct affine, the uncertainty map, a comparison PNG, and both
volumes as DICOM series for viewers that show no NIfTI."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Events

from custom.core.cases import batch_item, case_name, claim_output
from custom.core.dicom import NOT_FOR_DIAGNOSIS, DicomStudy, bundle_software, dicom_header, fit_lo, write_series
from custom.core.io import save_json, save_nifti, save_png
from custom.core.options import as_bool
from custom.core.transforms import cube_affine, window_to_hu
from custom.core.visualize import ct_slices_display, hstack, vstack, xray_display
from custom.core.xray import intake_record


class ReconstructionWriter:
    """Ignite handler: after each iteration, write every case of the batch to ``output_dir/<case>/``.

    Files: ``ct.nii.gz`` (float32 HU, RAS affine, spacing ``cube_mm / D`` mm), ``uncertainty.nii.gz`` (voxelwise
    standard deviation over the samples, in HU), ``comparison.png`` (input X-rays and orthogonal slices) and
    ``ct.json`` (window, clipping note, sampling settings). Every file is written atomically.

    With ``write_dicom``, the same two volumes also go out as DICOM CT series, ``ct_dicom/`` and
    ``uncertainty_dicom/`` (:func:`custom.core.dicom.write_series`: same geometry, values within 2^-8 HU), for
    viewers that cannot show NIfTI. When the X-rays were DICOM files, both series join their patient and study and
    reference them; otherwise they form a new study of an anonymous patient. ``ct.json`` lists their UIDs.

    Args:
        output_dir: folder for the cases.
        window: the HU window of the model; outputs are clipped to it (at [-200, 200], lungs and bone are clipped:
            the sidecar says so).
        cube_mm: side of the reconstructed cube.
        inferer: the :class:`~custom.xray2ct.inferer.DDIMInferer` (its ``last_std`` is the uncertainty).
        settings: extra entries for ``ct.json`` (stage, steps, weights file...).
        write_dicom: also write the DICOM series.
        bundle_root: the bundle folder; its name and ``configs/metadata.json`` version identify the software in the
            DICOM headers.
        views: the keys of the input X-rays, whose ``<key>_meta`` names their files.
        overwrite: replace the results of a case of the same name already in ``output_dir`` (otherwise refused).
    """

    def __init__(
        self,
        output_dir,
        window: Sequence[float],
        cube_mm: float = 320.0,
        inferer=None,
        settings=None,
        write_dicom=True,
        bundle_root=None,
        views: Sequence[str] = ("frontal", "lateral"),
        overwrite: bool = False,
    ):
        self.output_dir = Path(output_dir)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.window = tuple(float(w) for w in window)
        self.cube_mm = float(cube_mm)
        self.inferer = inferer
        self.settings = dict(settings or {})
        self.write_dicom = as_bool(write_dicom, "write_dicom")  # 'false' from a command line is a truthy string
        self.software = bundle_software(bundle_root, "xray2ct_cascade_diffusion")
        self.views = tuple(views)
        self.count = 0

    def _save_stages(self, case, i: int) -> list:
        """Every stage's CT in HU for a chained run (``ct_stage<n>.nii.gz``, each on its own cube grid), so a user can
        compare what each stage added; an empty list for a one-stage run."""
        outputs = _stage_outputs(self.inferer)
        if len(outputs) < 2:
            return []
        stages = []
        for number, out in enumerate(outputs, start=1):
            hu = window_to_hu(out[i].detach().float().cpu().reshape(out.shape[-3:]), self.window)
            affine = cube_affine(hu.shape[-1], self.cube_mm)
            save_nifti(hu.numpy(), affine, case / f"ct_stage{number}.nii.gz", description=f"cascade stage {number}, HU")
            stages.append(hu)
        return stages

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
            case = claim_output(self.output_dir / case_name(info, self.count), self.overwrite)
            self.count += 1
            hu = window_to_hu(pred, self.window)
            affine = cube_affine(d, self.cube_mm)
            save_nifti(hu.numpy(), affine, case / "ct.nii.gz", description=f"CT HU clipped to [{lo:g},{hi:g}]")
            unc = None
            if std is not None:
                unc = std[i].detach().float().cpu().reshape(pred.shape) * (hi - lo) / 2
                save_nifti(unc.numpy(), affine, case / "uncertainty.nii.gz", description="sample std, HU")
            stages = self._save_stages(case, i)
            xray = torch.as_tensor(item["image"] if item.get("image") is not None else info["xray"]).detach().cpu()
            top = hstack([xray_display(xray[0]), xray_display(xray[1])], height=256)
            rows = [top] + [hstack(ct_slices_display(s, window=self.window), height=256) for s in stages[:-1]]
            rows.append(hstack(ct_slices_display(hu, window=self.window), height=256))
            save_png(vstack(rows), case / "comparison.png")
            dicom = self._save_dicom(case, hu.numpy(), None if unc is None else unc.numpy(), affine, info)
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
                    "inputs": intake_record(info),
                    **({"dicom": dicom} if dicom else {}),
                    **({"stage_outputs": [f"ct_stage{n}.nii.gz" for n in range(1, len(stages) + 1)]} if stages else {}),
                    **({"stage_seconds": [round(t, 2) for t in self.inferer.seconds]} if stages else {}),
                    **(
                        {"uncertainty_from_stage": self.inferer.std_stage}
                        if getattr(self.inferer, "std_stage", 0)
                        else {}
                    ),
                    **self.settings,
                },
                case / "ct.json",
            )

    def _save_dicom(self, case: Path, hu, unc, affine, info: dict) -> dict | None:
        """``ct_dicom/`` and ``uncertainty_dicom/`` in ``case`` (when ``write_dicom``); their record for ``ct.json``.

        The uncertainty goes out as a CT image too (Rescale Type US, not HU): it lies on the CT's grid, and only an
        image with patient-space geometry (Image Plane, Frame of Reference) can be scrolled and overlaid with the CT
        in a viewer; a Secondary Capture (OT) carries no such geometry.
        """
        if not self.write_dicom:
            return None
        views = [v for v in self.views if (info.get(f"{v}_meta") or {}).get("filename_or_obj")]
        paths = [info[f"{v}_meta"]["filename_or_obj"] for v in views]
        study = DicomStudy.from_sources([h for h in map(dicom_header, paths) if h is not None])
        n, (lo, hi) = len(views) or len(self.views), self.window
        name, version = self.software
        software = f"{name} {version}"
        steps, samples = self.settings.get("num_inference_steps"), self.settings.get("num_samples")
        method = "denoising diffusion" + (f", {steps} DDIM steps" if steps else "")
        method += f", mean of {samples} samples" if samples else ""
        common = {
            "model_name": name,
            "software_version": version,
            "extra": {"BodyPartExamined": "CHEST"},
        }
        ct = write_series(
            hu,
            affine,
            case / "ct_dicom",
            study,
            series_description=fit_lo(
                f"CT reconstructed from {n} radiographs - {software} - {NOT_FOR_DIAGNOSIS}",
                f"CT from {n} X-rays - {software} - {NOT_FOR_DIAGNOSIS}",
                f"CT from {n} X-rays {software} NOT DIAGNOSTIC",
                f"CT from {n} X-rays - {NOT_FOR_DIAGNOSIS}",
            ),
            derivation_description=(
                f"Reconstructed from {n} radiographs ({', '.join(views) or 'frontal, lateral'}) by the {software} "
                f"bundle ({method}). HU clipped to [{lo:g}, {hi:g}]: lungs, fat and air read as {lo:g}, bone as "
                f"{hi:g}. An estimate made by a neural network, not a measurement. {NOT_FOR_DIAGNOSIS}."
            ),
            image_comments=(
                f"Synthetic CT estimated from {n} radiographs by {software}; structures may be missing or invented. "
                f"{NOT_FOR_DIAGNOSIS}."
            ),
            series_number=9001,
            window=self.window,
            **common,
        )
        record = {
            "study_instance_uid": study.attributes["StudyInstanceUID"],
            "frame_of_reference_uid": study.frame_of_reference_uid,
            "patient_and_study": (
                "copied from the input radiographs" if study.copied else "a new study of an anonymous patient"
            ),
            "ct": _series_record(ct, "ct_dicom"),
        }
        if unc is not None:
            series = write_series(
                unc,
                affine,
                case / "uncertainty_dicom",
                study,
                series_description=fit_lo(
                    f"Uncertainty (SD in HU, not tissue HU) - {software} - {NOT_FOR_DIAGNOSIS}",
                    f"Uncertainty (SD in HU, not tissue HU) - {NOT_FOR_DIAGNOSIS}",
                ),
                derivation_description=(
                    f"Voxelwise standard deviation, in HU, of the {samples or 'several'} samples whose mean is the "
                    f"CT series of the same frame of reference ({software}, {method}). High where the samples "
                    f"disagree; not the density of tissue. {NOT_FOR_DIAGNOSIS}."
                ),
                image_comments=(
                    f"Uncertainty of the synthetic CT: standard deviation in HU over samples, not tissue HU. "
                    f"{NOT_FOR_DIAGNOSIS}."
                ),
                series_number=9002,
                rescale_type="US",  # CT images whose values are not HU say so (Rescale Type is then required)
                image_type=("DERIVED", "SECONDARY", "AXIAL", "UNCERTAINTY"),
                window=(0.0, max(float(unc.max()), 1.0)),
                **common,
            )
            record["uncertainty"] = _series_record(series, "uncertainty_dicom")
        return record


def _series_record(info: dict, folder: str) -> dict:
    """A written series as ``ct.json`` lists it: folder relative to the case, UID, files and quantisation."""
    return {
        "folder": folder,
        "series_instance_uid": info["series_instance_uid"],
        "files": info["files"],
        "rescale_slope": info["rescale_slope"],
        "rescale_intercept": info["rescale_intercept"],
        "max_error_hu": info["max_error"],
    }


def _stage_outputs(inferer) -> list:
    return list(getattr(inferer, "outputs", None) or [])
