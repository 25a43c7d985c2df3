"""Writing refined masks: PNGs, and a DICOM Segmentation when the image was DICOM."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from ignite.engine import Events

from custom.core.cases import batch_item, claim_output
from custom.core.dicom import NOT_FOR_DIAGNOSIS, bundle_software, dicom_header, fit_lo
from custom.core.errors import InputError
from custom.core.io import atomic_path, save_png
from custom.core.options import as_bool, as_float
from custom.mask_refiner.data import MASK_THRESHOLD

SEG_SERIES_NUMBER = 9101
# attributes the segmentation copies from its image; a radiograph may leave them out, so they are added empty
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class MaskWriter:
    """Ignite handler for the mask refiner: ``<case>_mask.png`` (0/255) and ``<case>_overlay.png`` per image.

    The overlay shows the image in grey, the refined mask in red and the coarse mask's outline in yellow. When the
    image is a DICOM file and ``write_dicom`` is on, ``<case>_seg.dcm`` too (:func:`write_seg`).

    Args:
        output_dir: output folder.
        threshold: probability above which a pixel is foreground.
        write_dicom: write the DICOM Segmentation of DICOM images.
        bundle_root: the bundle folder; its name and ``configs/metadata.json`` version identify the software in the
            segmentation.
        overwrite: replace the files of an image of the same name already in ``output_dir`` (otherwise refused).
    """

    def __init__(
        self, output_dir, threshold: float = MASK_THRESHOLD, write_dicom=True, bundle_root=None, overwrite=False
    ):
        self.output_dir = Path(output_dir)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.threshold = as_float(threshold, "threshold", 0.0, 1.0, hint=" (a probability)")
        self.write_dicom = as_bool(write_dicom, "write_dicom")  # 'false' from a command line is a truthy string
        self.software = bundle_software(bundle_root, "mask_refiner_2d")

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
            claim_output(self.output_dir / f"{name}_mask.png", self.overwrite, folder=False)
            save_png((mask * 255).astype(np.uint8), self.output_dir / f"{name}_mask.png")
            grey = np.clip(x[2] / max(float(x[2].max()), 1e-6), 0, 1)
            rgb = np.stack([grey] * 3, axis=-1)
            rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.0, 0.0])
            coarse = x[1] > self.threshold
            edge = coarse & ~ndimage.binary_erosion(coarse)
            rgb[edge] = [1.0, 1.0, 0.0]
            save_png((rgb * 255).astype(np.uint8), self.output_dir / f"{name}_overlay.png")
            header = dicom_header(info.get("image_path")) if self.write_dicom else None
            if header is not None:
                write_seg(mask, header, self.output_dir / f"{name}_seg.dcm", self.software)


def write_seg(mask, source, path, software=("mask_refiner_2d", "unknown")) -> dict:
    """Write ``mask`` (rows, columns; True = foreground) as a binary DICOM Segmentation of the image ``source``.

    One segment, labelled a lesion (the structures the refiner is trained on), made by an AI algorithm named and
    versioned by ``software``; patient and study are the image's, and the segmentation references it, so a viewer
    shows it over the image. Written atomically. highdicom is imported here only: it needs pydicom 3, which the
    MONAI Label app's environment does not have.

    Args:
        mask: boolean array of the image's size.
        source: the image's pydicom dataset (its header is enough).
        path: the ``.dcm`` file to write.
        software: (name, version) of the bundle.

    Returns:
        ``path``, ``series_instance_uid``, ``sop_instance_uid``.
    """
    import numpy as np

    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as e:
        raise InputError(
            f"writing a DICOM segmentation needs highdicom ({e}): pip install highdicom==0.28.2, or set write_dicom "
            "false"
        ) from None
    path = Path(path)
    header = copy.deepcopy(source)  # the empty attributes added below must not change the caller's dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not getattr(header, keyword, None):
            raise InputError(
                f"{path.name}: the DICOM image has no {keyword}, so no segmentation can refer to it; fix the image's "
                "header or set write_dicom false"
            )
    for keyword in PATIENT_STUDY_KEYWORDS:
        if getattr(header, keyword, None) is None:
            setattr(header, keyword, "")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (int(header.Rows), int(header.Columns)):
        raise InputError(
            f"{path.name}: the mask is {mask.shape[0]}x{mask.shape[1]} pixels, the DICOM image "
            f"{header.Rows}x{header.Columns}; a segmentation must cover its image pixel for pixel"
        )
    name, version = software
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="refined mask",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=name, version=version, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    series_uid, sop_uid = hd.UID(), hd.UID()
    seg = hd.seg.Segmentation(
        source_images=[header],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="xray2ct-bundles",
        manufacturer_model_name=name,
        software_versions=version,
        device_serial_number="none",
        series_description=fit_lo(
            f"Refined mask - {name} {version} - {NOT_FOR_DIAGNOSIS}", f"Refined mask - {NOT_FOR_DIAGNOSIS}"
        ),
    )
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return {"path": str(path), "series_instance_uid": str(series_uid), "sop_instance_uid": str(sop_uid)}
