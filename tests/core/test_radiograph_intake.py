"""Hospital radiographs: pixel spacing in its order of trust, fallbacks, broken headers, view tags and mirroring,
and pairs that cannot be a frontal and a lateral view."""

import numpy as np
import pydicom
import pytest
import torch
from conftest import write_dx
from monai.data import DataLoader, Dataset

from custom.core.errors import InputError
from custom.core.physics import ProjectionGeometry
from custom.core.xray import FALLBACK_FIELD_MM, LoadXRayd, load_xray, to_detector


def chest(rows=40, cols=48, seed=0):
    """A bright body on a dark background, not symmetric, so that flips show."""
    rng = np.random.default_rng(seed)
    img = np.full((rows, cols), 300, np.uint16)
    img[5:35, 6:42] = 2000
    img[5:35, 6:12] = 3500  # a dense band at the image's left
    return (img + rng.integers(0, 50, img.shape)).astype(np.uint16)


def edit(path, **tags):
    ds = pydicom.dcmread(str(path))
    for name, value in tags.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.save_as(str(path))
    return path


@pytest.mark.parametrize("spacing", [None, [0.0, 0.0]])
def test_missing_or_zero_spacing_falls_back_to_a_cassette_with_a_warning(tmp_path, spacing):
    path = edit(write_dx(tmp_path / "cr.dcm", chest()), ImagerPixelSpacing=None, PixelSpacing=spacing)
    x = load_xray(path)
    side = FALLBACK_FIELD_MM / 48
    assert [float(s) for s in x.pixdim[:2]] == pytest.approx([side, side])
    assert x.meta["spacing_known"] and "cassette" in x.meta["warnings"][0]


def test_a_radiograph_without_spacing_goes_through_the_data_loader_and_keeps_its_warning(tmp_path):
    """The batch collation refuses None values: the reader's record must be strings and booleans only."""
    f = edit(write_dx(tmp_path / "pa.dcm", chest(), spacing=(0.2, 0.2)), ImagerPixelSpacing=None, ViewPosition="PA")
    lat = write_dx(tmp_path / "ll.dcm", chest(seed=1)[:, ::-1].copy(), spacing=(0.2, 0.2))
    t = LoadXRayd(["frontal", "lateral"], ProjectionGeometry("parallel", 16, 1.0), 16, check_views=False)
    batch = next(iter(DataLoader(Dataset([{"frontal": str(f), "lateral": str(lat)}], t), batch_size=1)))
    assert "cassette" in batch["frontal_meta"]["warnings"][0] and batch["lateral_meta"]["warnings"] == [""]


@pytest.mark.parametrize(
    "value,words",
    [
        ([float("nan"), 0.2], "two numbers"),
        ([0.2], "two numbers"),
        ([100.0, 100.0], "not a radiograph"),
        ([-0.2, 0.2], "not a radiograph"),
    ],
)
def test_broken_spacing_is_refused_with_what_to_do(tmp_path, value, words):
    path = write_dx(tmp_path / "dx.dcm", chest(), spacing=(0.2, 0.2))
    ds = pydicom.dcmread(str(path))
    ds["ImagerPixelSpacing"].value = value
    ds.save_as(str(path))
    with pytest.raises(InputError, match=words):
        load_xray(path)


def test_imager_spacing_with_a_magnification_factor_is_taken_to_the_patient_plane(tmp_path):
    """0.2 mm at the detector with magnification 1.25 is 0.16 mm in the patient; the model's cone beam (1.754x)
    then sees it at 0.2807 mm on its detector."""
    path = edit(
        write_dx(tmp_path / "dx.dcm", chest(), spacing=(0.2, 0.2)), EstimatedRadiographicMagnificationFactor=1.25
    )
    x = load_xray(path)
    assert [float(s) for s in x.pixdim[:2]] == pytest.approx([0.16, 0.16]) and x.meta["spacing_plane"] == "patient"
    geo = ProjectionGeometry("cone", 64, 2.0, source_to_isocenter=541.0, source_to_detector=949.0)
    plain = load_xray(edit(write_dx(tmp_path / "plain.dcm", chest(), spacing=(0.2, 0.2)), ViewPosition="PA"))
    # the body is magnified 1.754 / 1.25 times more than in the same image read without the factor
    body = lambda d: int((d[0].amax(dim=1) > 1000).sum())  # noqa: E731
    big, small = to_detector(x, geo), to_detector(plain, geo)
    assert body(big) > body(small)


def test_calibrated_pixel_spacing_is_trusted_before_the_detector_pitch(tmp_path):
    path = edit(write_dx(tmp_path / "dx.dcm", chest(), spacing=(0.2, 0.2)), PixelSpacing=[0.18, 0.18])
    x = load_xray(path)
    assert x.meta["spacing_tag"] == "PixelSpacing" and x.meta["spacing_plane"] == "patient"


def test_patient_orientation_mirrors_an_image_stored_the_other_way(tmp_path):
    img = chest()
    standard = load_xray(edit(write_dx(tmp_path / "a.dcm", img), ViewPosition="PA", PatientOrientation=["L", "F"]))
    mirrored = edit(write_dx(tmp_path / "b.dcm", img[:, ::-1].copy()), ViewPosition="AP", PatientOrientation=["R", "F"])
    x = load_xray(mirrored)
    assert x.meta["flip_columns"] and "flipped left-right" in x.meta["warnings"][0]
    assert torch.equal(x, standard)


def _pair(tmp_path, frontal_tags, lateral_tags):
    f = edit(write_dx(tmp_path / "f.dcm", chest(), spacing=(0.5, 0.5)), **frontal_tags)
    lat = edit(write_dx(tmp_path / "l.dcm", chest(seed=3)[:, 10:40], spacing=(0.5, 0.5)), **lateral_tags)
    t = LoadXRayd(["frontal", "lateral"], ProjectionGeometry("parallel", 16, 2.0), 16, check_views=True)
    return t, {"frontal": str(f), "lateral": str(lat)}


@pytest.mark.parametrize(
    "frontal,lateral,words",
    [("PA", "PA", "given as the lateral"), ("LL", "LL", "given as the frontal"), ("LL", "PA", "given as the frontal")],
)
def test_view_tags_that_contradict_the_keys_are_refused(tmp_path, frontal, lateral, words):
    t, data = _pair(tmp_path, {"ViewPosition": frontal}, {"ViewPosition": lateral})
    with pytest.raises(InputError, match=words):
        t(data)


def test_the_same_radiograph_twice_is_refused(tmp_path):
    f = write_dx(tmp_path / "f.dcm", chest(), spacing=(0.5, 0.5))
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(f.read_bytes())
    t = LoadXRayd(["frontal", "lateral"], ProjectionGeometry("parallel", 16, 2.0), 16, check_views=True)
    for lateral in (f, copy):
        with pytest.raises(InputError, match="same image"):
            t({"frontal": str(f), "lateral": str(lateral)})


def _drr_variant(tmp_path, name, scale=1.0, identity=False):
    import nibabel as nib
    from conftest import ROOT

    img = nib.load(str(ROOT / "bundles" / "xray2ct_cascade_diffusion" / "sample" / "frontal.nii.gz"))
    data = np.asarray(img.dataobj, dtype=np.float32) * scale
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if identity else img.affine), str(path))
    return path


@pytest.mark.parametrize(
    "scale,identity,words",
    [(500.0, False, "not DRR line integrals"), (-1.0, False, "not DRR line integrals"), (1.0, True, "64 mm wide")],
)
def test_nifti_xrays_in_other_units_or_with_a_wrong_spacing_are_refused(tmp_path, scale, identity, words):
    path = _drr_variant(tmp_path, "x.nii.gz", scale, identity)
    t = LoadXRayd(["frontal"], "x2ctgan", 64, check_views=False)
    with pytest.raises(InputError, match=words):
        t({"frontal": str(path)})
    t({"frontal": str(_drr_variant(tmp_path, "ok.nii.gz"))})  # the DRR as written is accepted
