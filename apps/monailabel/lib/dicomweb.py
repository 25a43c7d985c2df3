"""The app over a DICOMweb server (Orthanc, a PACS): radiographs in as DICOM files, reconstructed CTs back as series.

``--studies http://HOST:PORT/dicom-web`` makes MONAI Label use its DICOMweb datastore, whose image ids are Series
Instance UIDs. :class:`CheckedDICOMWebDatastore` is that datastore with the app's rules added:

- Ids. Every id is checked as in the local datastore (:class:`~lib.guards.CheckedLocalDatastore`, which it extends)
  and must also be a DICOM UID (:func:`~lib.guards.check_uid`): ids become folder names in the local cache and path
  segments of DICOMweb URLs on the server (``/studies/{study}/series/{series}``), so ``..`` or ``/`` in one would
  address other resources there.
- Radiographs stay DICOM. The stock datastore converts every series to NIfTI, which drops the tags the project's
  X-ray reader needs (Pixel Spacing, Imager Pixel Spacing, Photometric Interpretation, View Position, Patient
  Orientation). A series holding one radiograph (CR, DX) is served as its downloaded DICOM file; CT series are
  still converted as before.
- Views by their tags. :meth:`CheckedDICOMWebDatastore.pick_views` finds the frontal and the lateral radiograph
  of a study from View Position (PA/AP, LL/RL/LATERAL), else Patient Orientation, else View Code Sequence.
- Results into the same study. :meth:`CheckedDICOMWebDatastore.add_volume` writes a generated volume as a DICOM CT
  series (:func:`custom.core.dicom.write_series`) with the patient and study of its source images, and stores it
  with STOW-RS; its Series Instance UID is its image id from then on.
- Nothing is downloaded from the internet: MONAI Label's own set-up fetches the dcmqi tools (for DICOM SEG labels)
  from GitHub at start-up; this one does not, so ``final`` labels, which it stores as DICOM SEG, are refused unless
  dcmqi's ``itkimage2segimage`` is installed.

Uploads through ``PUT /datastore/image`` are refused: images live on the DICOMweb server (store them there with
STOW-RS or the server's own upload). Labels can be saved for series the server has converted to NIfTI (CT series),
not for radiographs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

# the X-ray reader's own lists, so that a pair picked here is never refused by it for its View Position
from custom.core.xray import FRONTAL_POSITIONS, LATERAL_POSITIONS

from .guards import CheckedLocalDatastore, check_id, check_uid

logger = logging.getLogger(__name__)

# modalities the datastore lists by default (MONAI Label lists CT only): CTs, and the radiographs xray2ct reads
LISTED_MODALITIES = ("CT", "CR", "DX")
STOCK_SEARCH_FILTER = {"Modality": "CT"}
RADIOGRAPH_MODALITIES = ("CR", "DX")
LIST_TTL_S = 10.0  # how long a series listing is reused; a stored series clears it at once
TIMEOUT_S = (10.0, 300.0)  # connect, read: a server that stops answering fails the request instead of hanging it
SEG_TOOL = "itkimage2segimage"


def _value(item: dict, tag: str) -> str:
    """First value of ``tag`` (8 hex digits) in a DICOM JSON object, '' when absent."""
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def view_of(ds) -> tuple[str, str]:
    """(``frontal``, ``lateral`` or '', the tag that says so) for a radiograph's header.

    View Position first; else Patient Orientation, whose first value is the direction along a row: a frontal image
    runs left-right (L or R), a lateral one front-back (A or P); else the View Code Sequence's meaning.
    """
    position = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if position in FRONTAL_POSITIONS:
        return "frontal", f"View Position {position}"
    if position in LATERAL_POSITIONS:
        return "lateral", f"View Position {position}"
    orientation = [str(v).strip().upper() for v in (getattr(ds, "PatientOrientation", None) or [])]
    if len(orientation) == 2 and orientation[0][:1] in ("L", "R", "A", "P"):
        view = "frontal" if orientation[0][:1] in ("L", "R") else "lateral"
        return view, "Patient Orientation " + "\\".join(orientation)
    for item in getattr(ds, "ViewCodeSequence", None) or []:
        meaning = str(getattr(item, "CodeMeaning", "")).lower()
        if "decubitus" in meaning or "oblique" in meaning:
            continue
        if "lateral" in meaning:
            return "lateral", f"View Code {meaning!r}"
        if "anterior" in meaning or "posterior" in meaning:
            return "frontal", f"View Code {meaning!r}"
    what = f"View Position {position!r}" if position else "no View Position"
    return "", f"{what}, no usable Patient Orientation or View Code"


@dataclass(frozen=True)
class Radiograph:
    """One radiograph instance on the server, downloaded: its ids, file, view and the tag the view came from."""

    series_uid: str
    sop_uid: str
    path: str
    view: str
    reason: str
    modality: str = ""

    def describe(self) -> str:
        view = self.view or "view unknown"
        return f"series {self.series_uid} ({self.modality}, {view}: {self.reason})"


@dataclass(frozen=True)
class Views:
    frontal: Radiograph
    lateral: Radiograph
    how: str  # 'tags' when picked from the study by their tags, 'named' when both were named in the request

    def info(self) -> dict:
        out = {"views_picked_by": self.how}
        for key, r in (("frontal", self.frontal), ("lateral", self.lateral)):
            out[f"{key}_series_uid"], out[f"{key}_sop_instance_uid"] = r.series_uid, r.sop_uid
            out[f"{key}_view_tag"] = r.reason
        return out


class _TimeoutSession(requests.Session):
    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT_S)
        return super().request(*args, **kwargs)


def make_client(url: str, settings) -> DICOMwebClientX:
    """MONAI Label's DICOMweb client for ``url``, with its user/password and URL prefix settings, and timeouts."""
    session = _TimeoutSession()
    user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    if user and password:
        session.auth = (user, password)
    return DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )


@contextlib.contextmanager
def _remote(base_url: str, what: str):
    """Turn a failing DICOMweb call into HTTP 502 naming the server and the call, not a bare 500."""
    try:
        yield
    except HTTPException:
        raise
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HTTPException(502, f"the DICOMweb server {base_url} refused to {what} (HTTP {status})") from None
    except requests.RequestException as e:
        raise HTTPException(
            502, f"the DICOMweb server {base_url} did not answer ({what}): {type(e).__name__}"
        ) from None


class CheckedDICOMWebDatastore(CheckedLocalDatastore, DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore with the app's id checks, radiographs kept as DICOM, and CT series stored back.

    The local cache (``cache_path``) keeps each downloaded series in a folder named by its UID, written completely
    under a temporary name first, so a broken download is never taken for a finished one.
    """

    def __init__(self, client, cache_path=None, search_filter=None, fetch_by_frame=False, convert_to_nifti=True):
        search_filter = dict(search_filter or STOCK_SEARCH_FILTER)
        super().__init__(client, search_filter, cache_path, fetch_by_frame, convert_to_nifti)
        # MONAI Label's default lists CT series only; radiographs must be listed too to be chosen in a viewer
        self._modalities = LISTED_MODALITIES if search_filter == STOCK_SEARCH_FILTER else None
        self._listing: tuple[float, list[str]] | None = None
        self._studies: dict = {}  # sources -> DicomStudy: the series made from one pair share a frame of reference
        self._download_lock = threading.Lock()

    # -- ids ---------------------------------------------------------------------------------------------------

    def _remote(self, what: str):
        return _remote(self._client.base_url, what)

    def locate(self, uid: str) -> tuple[str, str]:
        """('series' or 'study', the study's UID) for a UID on the server; HTTP 404 when it is neither."""
        check_uid(uid, "image id")
        with self._remote(f"look up {uid}"):
            found = self._client.search_for_series(search_filters={"SeriesInstanceUID": uid})
            found = [s for s in found if _value(s, "0020000E") == uid]
            if found:
                return "series", _value(found[0], "0020000D")
            studies = self._client.search_for_studies(search_filters={"StudyInstanceUID": uid})
            if any(_value(s, "0020000D") == uid for s in studies):
                return "study", uid
        raise HTTPException(404, f"no series or study with UID {uid!r} on the DICOMweb server")

    # -- downloads ---------------------------------------------------------------------------------------------

    def series_files(self, series_uid: str, study_uid: str | None = None) -> list[str]:
        """The DICOM files of a series, downloaded into the cache once (retrieved whole, then renamed into place)."""
        check_uid(series_uid, "series UID")
        folder = Path(self._datastore.image_path()) / series_uid
        files = sorted(str(p) for p in folder.glob("*.dcm")) if folder.is_dir() else []
        if files:
            return files
        if study_uid is None:
            kind, study_uid = self.locate(series_uid)
            if kind != "series":
                raise HTTPException(404, f"no series with UID {series_uid!r} on the DICOMweb server")
        check_uid(study_uid, "study UID")
        tmp = Path(tempfile.mkdtemp(prefix=f".{series_uid}-", dir=self._datastore.image_path()))
        try:
            with self._remote(f"send series {series_uid}"):
                instances = self._client.retrieve_series(study_uid, series_uid)
            for ds in instances:
                sop_uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
                ds.save_as(str(tmp / f"{sop_uid}.dcm"))
            with self._download_lock:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()  # an empty folder left by MONAI Label's own downloader
                if not folder.exists():
                    os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        files = sorted(str(p) for p in folder.glob("*.dcm"))
        if not files:
            raise HTTPException(404, f"the DICOMweb server sent no instances for series {series_uid!r}")
        return files

    def radiographs(self, series_uid: str, study_uid: str | None = None) -> list[Radiograph]:
        """Every radiograph instance of a series, downloaded, with the view its tags give."""
        import pydicom

        out = []
        for path in self.series_files(series_uid, study_uid):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - a file the reader cannot parse is simply not a radiograph here
                continue
            modality = str(getattr(ds, "Modality", ""))
            if modality not in RADIOGRAPH_MODALITIES:
                continue
            view, reason = view_of(ds)
            out.append(Radiograph(series_uid, str(ds.SOPInstanceUID), path, view, reason, modality))
        return out

    def study_radiographs(self, study_uid: str) -> list[Radiograph]:
        check_uid(study_uid, "study UID")
        with self._remote(f"list the series of study {study_uid}"):
            series = self._client.search_for_series(study_instance_uid=study_uid)
        found = []
        for s in series:
            if _value(s, "00080060") in RADIOGRAPH_MODALITIES:
                found += self.radiographs(_value(s, "0020000E"), study_uid)
        return found

    def get_image_uri(self, image_id: str) -> str:
        """A radiograph series' DICOM file (tags intact for the X-ray reader); other series as MONAI Label serves them
        (NIfTI, or the folder with conversion off). HTTP 404 for an unknown series."""
        check_uid(image_id, "image id")
        files = self.series_files(image_id)
        radiographs = self.radiographs(image_id)
        if len(files) == 1 and radiographs:
            return radiographs[0].path
        if radiographs:
            raise HTTPException(
                422,
                f"series {image_id!r} holds {len(files)} instances; name its study instead, and xray2ct picks the "
                "frontal and lateral radiographs by their tags",
            )
        with self._remote(f"describe series {image_id}"):
            return super().get_image_uri(image_id)

    # -- choosing the views ------------------------------------------------------------------------------------

    @staticmethod
    def _one(candidates: list[Radiograph], view: str, where: str) -> Radiograph:
        matches = [r for r in candidates if r.view == view]
        if len(matches) == 1:
            return matches[0]
        found = "; ".join(r.describe() for r in candidates) or "no CR or DX radiographs"
        how = "none is" if not matches else f"{len(matches)} are"
        raise HTTPException(
            422,
            f"cannot pick the {view} radiograph of {where}: {how} tagged {view} (View Position "
            f"{'/'.join(FRONTAL_POSITIONS if view == 'frontal' else LATERAL_POSITIONS)}, or Patient Orientation). "
            f"Found: {found}. Name them instead: image=<frontal series UID> and params "
            '{"lateral": "<lateral series UID>"}',
        )

    def _named(self, series_uid: str, key: str, want: str) -> Radiograph:
        kind, study_uid = self.locate(series_uid)
        if kind != "series":
            raise HTTPException(400, f"{key} {series_uid!r} is a study; give the lateral radiograph's series UID")
        candidates = self.radiographs(series_uid, study_uid)
        if not candidates:
            raise HTTPException(422, f"{key}: series {series_uid!r} holds no CR or DX radiograph")
        return candidates[0] if len(candidates) == 1 else self._one(candidates, want, f"series {series_uid}")

    @staticmethod
    def _pair(frontal: Radiograph, lateral: Radiograph, how: str) -> Views:
        if frontal.sop_uid and frontal.sop_uid == lateral.sop_uid:
            raise HTTPException(
                422,
                f"the frontal and lateral X-rays are the same image ({frontal.describe()}); name two radiographs, "
                "one from the front (PA or AP) and one from the side",
            )
        return Views(frontal, lateral, how)

    def pick_views(self, image_id: str | None, lateral_id: str | None = None, uploaded: str | None = None) -> Views:
        """The frontal and lateral radiographs of a request, downloaded.

        - ``image_id`` a study: both picked from the study by their tags (the lateral may be named in ``lateral_id``).
        - ``image_id`` a series, ``lateral_id`` given: the two named series (refused when their tags say they are
          the other way round).
        - ``image_id`` a series alone: it takes the view its tags give (frontal when they give none), and the other
          view is picked from its study by tags.
        - ``uploaded`` (a file sent with the request) is the frontal view; ``lateral_id`` is then required.
        """
        if lateral_id not in (None, ""):
            check_uid(lateral_id, "lateral")
        if uploaded:
            if not lateral_id:
                raise HTTPException(
                    400, 'with an uploaded frontal X-ray, name the lateral one\'s series in params {"lateral": "<UID>"}'
                )
            frontal = Radiograph("", "", uploaded, "frontal", "uploaded with the request")
            return self._pair(frontal, self._named(lateral_id, "lateral", "lateral"), "named")
        kind, study_uid = self.locate(image_id)
        if kind == "study":
            candidates = self.study_radiographs(study_uid)
            where = f"study {study_uid}"
            frontal = self._one(candidates, "frontal", where)
            lateral = (
                self._named(lateral_id, "lateral", "lateral") if lateral_id else self._one(candidates, "lateral", where)
            )
            return self._pair(frontal, lateral, "tags" if not lateral_id else "named")
        own = self.radiographs(image_id, study_uid)
        if not own:
            raise HTTPException(422, f"series {image_id!r} holds no CR or DX radiograph; xray2ct needs radiographs")
        if lateral_id:
            frontal = own[0] if len(own) == 1 else self._one(own, "frontal", f"series {image_id}")
            lateral = self._named(lateral_id, "lateral", "lateral")
            if frontal.view == "lateral" and lateral.view == "frontal":
                raise HTTPException(
                    422,
                    f"the radiographs look swapped: the image {frontal.describe()} is tagged lateral and "
                    f"params lateral {lateral.describe()} frontal; the image is the frontal view",
                )
            return self._pair(frontal, lateral, "named")
        where = f"study {study_uid}"
        if len(own) > 1:
            return self._pair(self._one(own, "frontal", where), self._one(own, "lateral", where), "tags")
        named = own[0]
        others = [r for r in self.study_radiographs(study_uid) if r.sop_uid != named.sop_uid]
        if named.view == "lateral":
            return self._pair(self._one(others, "frontal", where), named, "tags")
        return self._pair(named, self._one(others, "lateral", where), "tags")

    # -- storing results ---------------------------------------------------------------------------------------

    def dicom_study(self, sources=()):
        """The patient, study and frame of reference for series made from ``sources`` (DICOM files): theirs, or a
        new study when none is DICOM. Series made from the same sources share it, so viewers overlay them."""
        from custom.core.dicom import DicomStudy, dicom_header

        key = tuple(sorted(str(s) for s in sources if s and dicom_header(s) is not None))
        if key not in self._studies:
            if len(self._studies) > 64:
                self._studies.clear()
            self._studies[key] = DicomStudy.from_sources(list(key)) if key else DicomStudy.new()
        return self._studies[key]

    def add_volume(self, path: str, info: dict, sources=(), description: str = "", rescale_type: str = "HU") -> str:
        """Store the 3D NIfTI volume at ``path`` on the server as a DICOM CT series in the study of ``sources``;
        its Series Instance UID, which is its image id."""
        import nibabel as nib
        import pydicom

        from custom.core.dicom import fit_lo, write_series

        img = nib.load(path)
        volume = img.get_fdata(dtype="float32")
        if volume.ndim != 3:
            raise HTTPException(400, f"only 3D volumes can be stored as DICOM series, got shape {volume.shape}")
        study = self.dicom_study(sources)
        made_by = info.get("generated_by", "this app")
        settings = ", ".join(f"{k} {info[k]}" for k in ("num_inference_steps", "num_samples", "seed") if k in info)
        with tempfile.TemporaryDirectory(prefix="monailabel_series_") as tmp:
            written = write_series(
                volume,
                img.affine,
                Path(tmp) / "series",
                study,
                series_description=fit_lo(description or f"{made_by} result", made_by),
                derivation_description=f"Made by the MONAI Label app, model {made_by}"
                + (f" ({settings})" if settings else "")
                + ". Research software, not for diagnosis.",
                rescale_type=rescale_type,
                window=info.get("window"),
                image_comments="NOT FOR DIAGNOSTIC USE",
            )
            datasets = [pydicom.dcmread(str(p)) for p in sorted((Path(tmp) / "series").glob("*.dcm"))]
            series_uid = written["series_instance_uid"]
            with self._remote(f"store series {series_uid}"):
                answer = self._client.store_instances(datasets)
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            raise HTTPException(502, f"the DICOMweb server refused {len(failed)} of {len(datasets)} instances")
        self._listing = None
        study_uid = study.attributes.get("StudyInstanceUID")
        logger.info(f"stored series {series_uid} ({len(datasets)} instances) in study {study_uid}")
        return series_uid

    # -- what the stock datastore would do wrongly here -------------------------------------------------------

    def list_images(self):
        """Series UIDs of the listed modalities (CT, CR, DX unless MONAI_LABEL_DICOMWEB_SEARCH_FILTER says
        otherwise), cached for a few seconds instead of MONAI Label's two hours, so new results show at once."""
        if self._modalities is None:
            with self._remote("list series"):
                return DICOMWebDatastore.list_images.__wrapped__(self)
        if self._listing and time.time() - self._listing[0] < LIST_TTL_S:
            return list(self._listing[1])
        series = []
        with self._remote("list series"):
            for modality in self._modalities:
                series += [
                    _value(s, "0020000E") for s in self._client.search_for_series(search_filters={"Modality": modality})
                ]
        series = list(dict.fromkeys(s for s in series if s))
        self._listing = (time.time(), series)
        return list(series)

    def check_image_file(self, file_name: str) -> str:
        raise HTTPException(
            400,
            "this server's images live on the DICOMweb server: store DICOM files there (STOW-RS, or the server's "
            "own upload) and they appear here by their Series Instance UID",
        )

    def add_image(self, image_id, image_filename, image_info):
        self.check_image_file(image_filename)

    def check_label_target(self, image_id, label_tag) -> None:
        check_id(label_tag, "label tag")
        check_uid(image_id, "image id")
        if label_tag == DefaultLabelTag.FINAL.value and not shutil.which(SEG_TOOL):
            raise HTTPException(
                400,
                f"'final' labels are stored on the DICOMweb server as DICOM SEG, made with dcmqi's {SEG_TOOL}, which "
                "is not installed (this app downloads nothing); install dcmqi, or save the label under another tag",
            )
        if image_id not in self._datastore.objects:
            raise HTTPException(
                400,
                f"labels can be saved for series this server has opened as NIfTI (CT series); {image_id!r} is not "
                "one. For a radiograph, upload the label with the infer request",
            )

    def save_label(self, image_id, label_filename, label_tag, label_info):
        self.check_label_target(image_id, label_tag)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def get_image_info(self, image_id):
        return super().get_image_info(check_uid(image_id, "image id"))

    def get_label_uri(self, label_id, label_tag, image_id=""):
        check_uid(label_id, "label id")
        if image_id:
            check_uid(image_id, "image id")
        with self._remote(f"send label {label_id}"):
            return DICOMWebDatastore.get_label_uri(self, label_id, check_id(label_tag, "label tag"), image_id)
