"""The MONAI Label app against a real Orthanc (DICOMweb) on loopback: radiographs in, a CT series back in their study.

Orthanc runs from apps/monailabel/orthanc/run_orthanc.py with a throwaway storage folder; the app runs as a real
``monailabel start_server --studies http://127.0.0.1:PORT/dicom-web`` over tiny bundles (fresh weights, 16^3, 2
DDIM steps, 1 sample). The radiographs are the bundle's sample DRRs written as DX DICOM (orthanc/drr_to_dx.py)
with the tags a hospital radiograph has (View Position or Patient Orientation, Pixel Spacing, Imager Pixel
Spacing, MONOCHROME1/2, Patient ID, Study Instance UID). Skipped where the Debian packages orthanc and
orthanc-dicomweb are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")

from test_monailabel_app import APP_DIR, ROOT, _free_port, _tiny_bundles, serving  # noqa: E402


def _load(name):
    """A script of apps/monailabel/orthanc as a module (the folder is not a package: its scripts run on their own)."""
    spec = importlib.util.spec_from_file_location(name, APP_DIR / "orthanc" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_orthanc, drr_to_dx = _load("run_orthanc"), _load("drr_to_dx")
if run_orthanc.missing():
    pytest.skip(f"Orthanc tests skipped: {run_orthanc.missing()}", allow_module_level=True)

SAMPLE = ROOT / "bundles" / "xray2ct_cascade_diffusion" / "sample"
FAST = {"num_inference_steps": 2, "num_samples": 1}
VIEWS = ("frontal", "lateral")


@pytest.fixture(scope="module")
def orthanc():
    server = run_orthanc.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def studies(orthanc):
    """Two studies of a PA and an LL radiograph: A with View Position and MONOCHROME2, uploaded with STOW-RS; B with
    Patient Orientation only and MONOCHROME1 (the same pixels, inverted), uploaded through Orthanc's REST API."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    out = {}
    for key, monochrome, view_position in (("A", "MONOCHROME2", True), ("B", "MONOCHROME1", False)):
        study = drr_to_dx.new_study(f"XR-{key}", f"Test^{key}")
        views = {v: drr_to_dx.dx_dataset(SAMPLE / f"{v}.nii.gz", v, study, monochrome, view_position) for v in VIEWS}
        if key == "A":
            answer = DICOMwebClient(orthanc.dicomweb).store_instances(list(views.values()))
            assert not getattr(answer, "FailedSOPSequence", None)
        else:
            for ds in views.values():
                r = requests.post(f"{orthanc.url}/instances", data=drr_to_dx.encode(ds), timeout=30)
                assert r.status_code == 200, r.text
        study.update({v: str(ds.SeriesInstanceUID) for v, ds in views.items()})
        out[key] = study
    # C: an AP frontal whose Pixel Spacing is "0\\0" and a lateral with no spacing at all, as some CR exports are
    study = drr_to_dx.new_study("XR-C", "Test^C")
    views = {v: drr_to_dx.dx_dataset(SAMPLE / f"{v}.nii.gz", v, study) for v in VIEWS}
    views["frontal"].ViewPosition = "AP"
    views["frontal"].PixelSpacing = [0, 0]
    del views["frontal"].ImagerPixelSpacing
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        delattr(views["lateral"], tag)
    for ds in views.values():
        r = requests.post(f"{orthanc.url}/instances", data=drr_to_dx.encode(ds), timeout=30)
        assert r.status_code == 200, r.text
    out["C"] = dict(study, **{v: str(ds.SeriesInstanceUID) for v, ds in views.items()})
    return out


@pytest.fixture(scope="module")
def label_server(orthanc, tmp_path_factory):
    """``monailabel start_server`` over Orthanc's DICOMweb on a free loopback port; stopped by its PID afterwards."""
    tmp = tmp_path_factory.mktemp("monailabel_orthanc")
    bundles = _tiny_bundles(tmp / "bundles")
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MONAI_LABEL_DATASTORE_CACHE_PATH=str(tmp / "cache"),
        MONAI_LABEL_SESSION_PATH=str(tmp / "sessions"),
    )
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR)]
    cmd += ["--studies", orthanc.dicomweb, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--conf", "bundles", str(bundles), "--conf", "models", "xray2ct,ct_refiner"]
    with serving(cmd, env, tmp, tmp / "server.log", port) as url:
        yield {"url": url, "log": tmp / "server.log", "cache": tmp / "cache", "tmp": tmp}


def _xray2ct(server, image, params=None, tmp=None):
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server["url"], tmpdir=str(tmp or server["tmp"]))
    return client.infer("xray2ct", image, dict(FAST, **(params or {})))


def _series_in_study(orthanc, study_uid) -> dict:
    from dicomweb_client.api import DICOMwebClient

    found = DICOMwebClient(orthanc.dicomweb).search_for_series(study_instance_uid=study_uid)
    return {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in found}


def _read_series(orthanc, study_uid, series_uid, folder: Path):
    """The series as Orthanc sends it (WADO-RS), read by the project's CT reader: (HU (X, Y, Z), RAS affine, header)."""
    from dicomweb_client.api import DICOMwebClient

    from custom.core.ct import read_dicom_ct

    folder.mkdir(parents=True)
    instances = DICOMwebClient(orthanc.dicomweb).retrieve_series(study_uid, series_uid)
    for ds in instances:
        ds.save_as(str(folder / f"{ds.SOPInstanceUID}.dcm"))
    hu, affine = read_dicom_ct(folder)
    return hu, affine, instances[0]


def test_orthanc_runner_starts_answers_and_stops_by_pid(tmp_path):
    """The script users run: prints the PID, Orthanc answers /system and DICOMweb on loopback, stop removes it all."""
    import requests

    script = APP_DIR / "orthanc" / "run_orthanc.py"
    started = subprocess.run([sys.executable, str(script), "start"], capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())
    url = started.stderr.split("REST ", 1)[1].split(",", 1)[0]
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(f"{url}/system", timeout=5).json()["Version"]
    assert requests.get(f"{url}/dicom-web/studies", timeout=5).json() == []
    folder = Path(started.stderr.split("storage ", 1)[1].split(";", 1)[0])
    assert folder.is_dir()
    refused = subprocess.run([sys.executable, str(script), "stop", str(os.getpid())], capture_output=True, text=True)
    assert refused.returncode == 2 and "not an Orthanc" in refused.stderr  # never ends another process
    stopped = subprocess.run(
        [sys.executable, str(script), "stop", str(pid)], capture_output=True, text=True, timeout=60
    )
    assert stopped.returncode == 0, stopped.stderr
    assert not folder.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/system", timeout=5)


def test_xray2ct_from_an_orthanc_study_files_a_ct_series_into_that_study(orthanc, studies, label_server, tmp_path):
    """The request names a study: the views are picked by View Position, the CT and its uncertainty go back to
    Orthanc as CT series of the same patient and study, and read back on the bundle's cube."""
    from custom.core.transforms import cube_affine

    a = studies["A"]
    ct_file, params = _xray2ct(label_server, a["uid"], tmp=tmp_path)
    assert params["views_picked_by"] == "tags"
    assert (params["frontal_series_uid"], params["lateral_series_uid"]) == (a["frontal"], a["lateral"])
    assert params["frontal_view_tag"] == "View Position PA" and params["lateral_view_tag"] == "View Position LL"
    assert params["study_instance_uid"] == a["uid"]

    series = _series_in_study(orthanc, a["uid"])  # QIDO-RS /studies/{uid}/series
    assert series[params["ct_image_id"]] == "CT" and series[params["uncertainty_image_id"]] == "CT"
    assert series[a["frontal"]] == "DX" and len(series) == 4

    hu, affine, header = _read_series(orthanc, a["uid"], params["ct_image_id"], tmp_path / "ct")
    assert hu.shape == (16, 16, 16)
    np.testing.assert_allclose(affine, cube_affine(16, 320.0), atol=1e-3)
    returned = nib.load(ct_file)
    np.testing.assert_allclose(returned.affine, affine, atol=1e-3)
    np.testing.assert_allclose(hu, np.asarray(returned.dataobj), atol=2**-8)  # int16 steps of 2^-9 HU
    assert hu.min() >= -200 and hu.max() <= 200 and hu.std() > 0
    assert (header.PatientID, header.PatientName, header.StudyInstanceUID) == (
        a["patient_id"],
        a["patient_name"],
        a["uid"],
    )
    assert header.Modality == "CT" and "DERIVED" in header.ImageType
    sources = {str(item.ReferencedSOPInstanceUID) for item in header.SourceImageSequence}
    assert len(sources) == 2  # both radiographs are referenced


def test_monochrome1_radiographs_named_by_patient_orientation_give_the_same_ct(
    orthanc, studies, label_server, tmp_path
):
    """Study B holds the same pixels stored inverted (MONOCHROME1) and no View Position: the reader must see the
    Photometric Interpretation, and the views come from Patient Orientation. Naming one series of a study picks the
    other view from the study; naming both uses them as given."""
    a, b = studies["A"], studies["B"]
    ct_a, params_a = _xray2ct(label_server, a["uid"], tmp=tmp_path)
    ct_b, params_b = _xray2ct(label_server, b["uid"], tmp=tmp_path)
    assert params_b["frontal_view_tag"].startswith("Patient Orientation L")
    assert params_b["lateral_view_tag"].startswith("Patient Orientation P")
    hu_a, hu_b = (np.asarray(nib.load(f).dataobj) for f in (ct_a, ct_b))
    np.testing.assert_array_equal(hu_a, hu_b)  # an inverted image read as it is stored would give another CT
    assert params_b["ct_image_id"] in _series_in_study(orthanc, b["uid"])
    assert params_b["ct_image_id"] not in _series_in_study(orthanc, a["uid"])

    ct_lat, params_lat = _xray2ct(label_server, a["lateral"], tmp=tmp_path)  # one series: the other by its tag
    assert params_lat["frontal_series_uid"] == a["frontal"] and params_lat["views_picked_by"] == "tags"
    ct_named, params_named = _xray2ct(label_server, b["frontal"], {"lateral": b["lateral"], "seed": 3}, tmp_path)
    assert params_named["views_picked_by"] == "named" and params_named["seed"] == 3
    np.testing.assert_array_equal(np.asarray(nib.load(ct_lat).dataobj), hu_a)
    assert not np.array_equal(np.asarray(nib.load(ct_named).dataobj), hu_b)  # another seed, another sample


def test_orthanc_requests_that_cannot_work_get_a_4xx_that_says_why(orthanc, studies, label_server):
    import requests
    from pydicom.uid import generate_uid

    url, a = label_server["url"], studies["A"]

    def infer(image, params=None, model="xray2ct"):
        r = requests.post(
            f"{url}/infer/{model}", params={"image": image}, data={"params": json.dumps(params or {})}, timeout=60
        )
        return r.status_code, r.json().get("detail", "")

    unknown = generate_uid()
    cases = [
        (infer(unknown), 404, unknown),
        (infer("../x"), 400, "path separator"),
        (infer("chest_01"), 400, "DICOM UID"),  # a name that is safe locally but no UID: never sent to Orthanc
        (infer(a["frontal"], {"lateral": "1.2/../3"}), 400, "lateral"),
        (infer(a["frontal"], {"lateral": a["frontal"]}), 422, "same image"),
        (infer(a["uid"], model="ct_refiner"), 404, a["uid"]),  # a study is not an image for other models
    ]
    for (status, detail), want, words in cases:
        assert status == want and words in detail, (status, detail, want, words)
    with open(SAMPLE / "frontal.nii.gz", "rb") as f:
        r = requests.put(f"{url}/datastore/image?image=up", files={"file": ("f.nii.gz", f)}, timeout=30)
    assert r.status_code == 400 and "DICOMweb server" in r.json()["detail"]
    assert requests.get(f"{url}/info/", timeout=10).status_code == 200
    # monailabel's DICOMweb proxy (its OHIF viewer's way to Orthanc) serves DICOMweb, not Orthanc's whole REST API
    assert requests.get(f"{url}/proxy/dicom/studies", timeout=30).json()
    for escape in ("..%2fsystem", "qido/..%2F..%2Fsystem", "..%252fsystem", "studies/%2e%2e/%2e%2e/tools/now"):
        r = requests.get(f"{url}/proxy/dicom/{escape}", timeout=30)
        assert r.status_code == 400 and "DICOMweb root" in r.json()["detail"], (escape, r.status_code, r.content[:80])
    # the app lists the radiographs and CTs of the server, not MONAI Label's CT-only default
    from dicomweb_client.api import DICOMwebClient

    on_server = DICOMwebClient(orthanc.dicomweb).search_for_series()
    assert {s["00080060"]["Value"][0] for s in on_server} >= {"DX", "CT"}
    stats = requests.get(f"{url}/datastore/?output=stats", timeout=30)
    assert stats.status_code == 200 and stats.json()["total"] == len(on_server), (stats.text, len(on_server))


def test_an_ap_radiograph_without_usable_spacing_is_placed_as_a_cassette_and_says_so(
    orthanc, studies, label_server, tmp_path
):
    """Study C: an AP frontal with Pixel Spacing 0\\0 and a lateral without spacing still reconstruct, the CT is filed
    into the study, and the answer carries the reader's warnings (and no server paths)."""
    c = studies["C"]
    ct_file, params = _xray2ct(label_server, c["uid"], tmp=tmp_path)
    assert params["frontal_view_tag"] == "View Position AP" and params["study_instance_uid"] == c["uid"]
    warnings = params["inputs"]["warnings"]
    assert len(warnings) == 2 and all("cassette" in w for w in warnings)
    assert "filename_or_obj" not in params["inputs"]["frontal"]
    assert _series_in_study(orthanc, c["uid"])[params["ct_image_id"]] == "CT"
    assert nib.load(ct_file).shape == (16, 16, 16)
