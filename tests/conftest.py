"""Shared fixtures: real NIfTI files, DICOM series and radiographs written to temporary folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def write_nifti(path, data, spacing=(1.0, 1.0, 1.0), affine=None, dtype=np.float32):
    if affine is None:
        affine = np.diag(list(spacing) + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), affine), str(path))
    return Path(path)


def write_dicom_series(
    folder,
    hu,
    spacing=(0.8, 0.8, 2.0),
    positions=None,
    series_uid=None,
    modality="CT",
    patient_id="P001",
    slope=1.0,
    intercept=-1024.0,
):
    """Write ``hu`` (X, Y, Z) as an axial DICOM series with real pydicom datasets; returns the folder."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    nx, ny, nz = hu.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.SeriesDescription = f"test {modality}"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = positions[k] if positions is not None else k * spacing[2]
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.clip(np.rint((hu[:, :, k].T - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(folder / f"{k:04d}.dcm"), enforce_file_format=True)
    return folder


def write_dx(
    path,
    image_rows_cols,
    spacing=(0.2, 0.25),
    monochrome="MONOCHROME2",
    tag="ImagerPixelSpacing",
    modality="DX",
    slope=1.0,
    intercept=0.0,
):
    """Write a (rows, cols) uint16 image as a DX radiograph."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    arr = np.asarray(image_rows_cols, dtype=np.uint16)
    ds.Rows, ds.Columns = arr.shape
    setattr(ds, tag, list(spacing))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = monochrome
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = arr.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def run_cli(*args, cwd=None, timeout=600, prefix=()):
    """Run ``python -m custom ...`` in a real subprocess; returns the CompletedProcess.

    ``prefix``: a command to run it under, e.g. :func:`unprivileged`.
    """
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "custom", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        env=env,
    )


def run_bundle(bundle, *args, configs=("inference.json",), cwd=None, timeout=600, prefix=()):
    """Run ``python -m monai.bundle run`` on ``bundles/<bundle>`` configs as a user types it; the CompletedProcess."""
    import subprocess

    root = ROOT / "bundles" / bundle
    files = "[" + ",".join(f"'{root / 'configs' / c}'" for c in configs) + "]"
    cmd = [*prefix, sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(root)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout, env=env
    )


def unprivileged() -> list:
    """Command prefix under which file permissions hold: root ignores them (a read-only folder is writable to
    root), so as root the child runs without that capability; nothing is needed for other users."""
    import shutil

    if getattr(os, "geteuid", lambda: 1)() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to make a folder root cannot write to")
    return [setpriv, "--bounding-set", "-dac_override", "--"]


def tensorboard_files_without_data(folder) -> list:
    """TensorBoard event files under ``folder`` that hold no scalar, image or other summary (only the file header):
    what a process that should not log leaves behind when it builds a writer anyway."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    empty = []
    for path in sorted(Path(folder).rglob("events.out.tfevents*")):
        if not any(event.HasField("summary") for event in EventFileLoader(str(path)).Load()):
            empty.append(path)
    return empty


@pytest.fixture
def small_phantom():
    from custom.datasets.phantom import chest_phantom

    return chest_phantom(seed=1, size=32)


def tiny_cascade_trainer(physics: float = 0.0):
    """A CascadeDiffusionTrainer around a 16^3 denoiser with a few thousand parameters (parallel-beam physics)."""
    from custom.xray2ct.losses import DRRConsistencyLoss
    from custom.xray2ct.network import CascadeDenoiser
    from custom.xray2ct.trainer import CascadeDiffusionTrainer

    net = CascadeDenoiser(16, 4, False, (8, 8, 8), 8, 16, 24, 1, 2)
    return CascadeDiffusionTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[None],
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
        loss_weights={"physics": physics},
        physics_loss=DRRConsistencyLoss("parallel"),
        ssim_win_size=3,
    )


# a tiny cascade stage 1 (CascadeDenoiser keyword arguments), for tests that need a frozen cascade behind a refiner
TINY_CASCADE = {
    "volume_size": 16,
    "token_grid": 2,
    "channels": [8, 8, 8],
    "hidden_size": 24,
    "vit_depth": 1,
    "num_heads": 2,
    "geometry": "x2ctgan",
}


def run_workflow(configs_dir, configs, workflow_type, bundle_root, **overrides):
    """Run a bundle's ``configs`` (names in ``configs_dir``, layered in order) in-process through MONAI's
    ``ConfigWorkflow`` with ``overrides``; returns the finished workflow."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(Path(configs_dir) / c) for c in configs],
        meta_file=str(Path(configs_dir) / "metadata.json"),
        logging_file=str(Path(configs_dir) / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
