"""DRR projector: exact chord lengths on analytic phantoms, adjointness, batching, orientation, devices."""

import math

import pytest
import torch

from custom.core.physics import DRR, DRRProjector, ProjectionGeometry, get_geometry, hu_to_mu

PARALLEL = ProjectionGeometry("parallel", 64, 1.5)
CONE = ProjectionGeometry("cone", 64, 2.6, 541.0, 949.0)


def _grid(n, sp):
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * sp


def water_sphere(n, sp, r):
    """Unit occupancy of a sphere with a one-voxel linear partial-volume edge."""
    g = _grid(n, sp)
    d = torch.sqrt(g.view(-1, 1, 1) ** 2 + g.view(1, -1, 1) ** 2 + g.view(1, 1, -1) ** 2)
    return (0.5 - (d - r) / sp).clamp(0, 1).float()


def ray_geometry(geo, angle):
    """Source point (or direction) and detector pixel centres, in patient coordinates (float64)."""
    from custom.core.physics.geometry import detector_axes, source_direction

    n = geo.detector_pixels
    det = _grid(n, geo.detector_spacing)
    s = torch.tensor(source_direction(angle), dtype=torch.float64)
    e_u, e_v = (torch.tensor(e, dtype=torch.float64) for e in detector_axes(angle))
    if geo.beam == "cone":
        centre = -(geo.source_to_detector - geo.source_to_isocenter) * s
        pix = centre + det.view(-1, 1, 1) * e_u + det.view(1, -1, 1) * e_v
        return geo.source_to_isocenter * s, pix
    pix = det.view(-1, 1, 1) * e_u + det.view(1, -1, 1) * e_v
    return None, pix


@pytest.mark.parametrize("geo", [PARALLEL, CONE], ids=["parallel", "cone"])
@pytest.mark.parametrize("angle,tol", [(0.0, 0.005), (90.0, 0.005), (30.0, 0.01)])
def test_sphere_chords_match_analytic(geo, angle, tol):
    """0.5% at the frontal and lateral views; oblique rays are sampled every 1/cos(30 deg) = 1.15 voxels, so the
    interpolated surface of the sphere shifts by up to a few tenths of a mm: 1% there."""
    n, sp, r = 96, 1.0, 40.0
    mu = water_sphere(n, sp, r)[None, None] * 0.02
    img = DRRProjector(geo, [angle])(mu, (sp, sp, sp))[0, 0].double() / 0.02
    src, pix = ray_geometry(geo, angle)
    if src is None:  # parallel: distance of the ray from the centre is the in-plane pixel offset
        dist = pix.norm(dim=-1)
    else:
        d = pix - src
        dist = torch.linalg.cross(src.expand_as(d), d, dim=-1).norm(dim=-1) / d.norm(dim=-1)
    chord = 2 * torch.sqrt((r**2 - dist**2).clamp(min=0))
    inner = dist < r - 4 * sp  # rays that do not graze the surface
    rel = ((img - chord).abs() / chord)[inner]
    assert inner.sum() > 500
    assert rel.max() < tol, f"max relative chord error {rel.max():.4f}"
    assert img[dist > r + 2 * sp].abs().max() < 1e-6  # rays that miss see air only


@pytest.mark.parametrize("geo", [PARALLEL, CONE], ids=["parallel", "cone"])
def test_cube_chords_match_analytic(geo):
    n, sp, side = 64, 2.0, 60.0
    g = _grid(n, sp)
    inside = (g.abs() < side / 2).float()
    mu = (inside.view(-1, 1, 1) * inside.view(1, -1, 1) * inside.view(1, 1, -1))[None, None]
    img = DRRProjector(geo, ["frontal"])(mu, (sp, sp, sp))[0, 0].double()
    src, pix = ray_geometry(geo, 0.0)
    if src is None:
        chord = torch.full(img.shape, side, dtype=torch.float64)
        through = (pix[..., 0].abs() < side / 2 - 2 * sp) & (pix[..., 2].abs() < side / 2 - 2 * sp)
    else:
        d = pix - src  # rays along +y; entry and exit faces at y = -side/2 and +side/2
        t0, t1 = (-side / 2 - src[1]) / d[..., 1], (side / 2 - src[1]) / d[..., 1]
        p0, p1 = src + t0[..., None] * d, src + t1[..., None] * d
        margin = side / 2 - 2 * sp
        through = (p0[..., [0, 2]].abs() < margin).all(-1) & (p1[..., [0, 2]].abs() < margin).all(-1)
        chord = side * d.norm(dim=-1) / d[..., 1].abs()
    rel = ((img - chord).abs() / chord)[through]
    assert through.sum() > 100
    assert rel.max() < 0.005, f"max relative chord error {rel.max():.4f}"


def test_water_path_beer_lambert():
    """200 mm of water at 0.0193 /mm gives a line integral of 3.86 (NOTES: I/I0 = exp(-3.86))."""
    n, sp = 40, 5.0
    hu = torch.zeros(1, 1, n, n, n)
    drr = DRR(ProjectionGeometry("parallel", 16, 5.0), ["frontal"])(hu, (sp, sp, sp))
    assert torch.allclose(drr[0, 0, 4:12, 4:12], torch.tensor(200 * 0.0193), rtol=1e-4)
    assert hu_to_mu(torch.tensor(-1000.0)) == 0 and hu_to_mu(torch.tensor(-2000.0)) == 0


@pytest.mark.parametrize("views", [("frontal", "lateral"), (30.0, 135.0)], ids=["separable", "general"])
@pytest.mark.parametrize("geo", [PARALLEL, CONE], ids=["parallel", "cone"])
def test_backward_is_the_adjoint(geo, views):
    """<P x, y> = <x, P^T y>, with P^T y from autograd: gradients are those of the rendered image."""
    torch.manual_seed(0)
    proj = DRRProjector(geo, views)
    x = torch.rand(2, 1, 20, 24, 28, requires_grad=True)
    sp = (3.0, 2.5, 2.0)
    out = proj(x, sp)
    y = torch.randn_like(out)
    (out * y).sum().backward()
    lhs = (out.detach().double() * y.double()).sum()
    rhs = (x.detach().double() * x.grad.double()).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-4), (lhs, rhs)
    # and a finite difference on one voxel (the map is linear, so this is exact up to rounding)
    e = torch.zeros_like(x)
    e[1, 0, 10, 12, 14] = 1.0
    fd = ((proj(x.detach() + e, sp) - proj(x.detach(), sp)) * y).sum()
    assert torch.isclose(fd, x.grad[1, 0, 10, 12, 14], rtol=1e-2, atol=1e-4)


def test_batch_equals_single():
    torch.manual_seed(1)
    proj = DRRProjector(CONE)
    vols = torch.rand(3, 1, 16, 16, 16)
    both = proj(vols, (4.0, 4.0, 4.0))
    for i in range(3):
        assert torch.allclose(both[i], proj(vols[i : i + 1], (4.0, 4.0, 4.0))[0], atol=1e-5)


def test_views_follow_radiological_orientation():
    """Patient's right on the viewer's left (frontal), anterior on the left (lateral), head at the top."""
    n, sp = 32, 4.0
    geo = ProjectionGeometry("parallel", 32, 4.0)
    g = _grid(n, sp)

    def blob(x, y, z):
        d2 = (g.view(-1, 1, 1) - x) ** 2 + (g.view(1, -1, 1) - y) ** 2 + (g.view(1, 1, -1) - z) ** 2
        return torch.exp(-d2 / 50).float()[None, None]

    drr = DRRProjector(geo)
    right = drr(blob(40, 0, 0), (sp,) * 3)[0]
    assert right[0].sum(1).argmax() < n // 2  # frontal: column of the blob on the left half
    anterior = drr(blob(0, 40, 0), (sp,) * 3)[0]
    assert anterior[1].sum(1).argmax() < n // 2  # lateral: anterior on the left
    superior = drr(blob(0, 0, 40), (sp,) * 3)[0]
    assert superior[0].sum(0).argmax() < n // 2 and superior[1].sum(0).argmax() < n // 2  # rows: head at top


def test_lateral_is_frontal_of_rotated_volume():
    torch.manual_seed(2)
    vol = torch.rand(1, 1, 24, 24, 24)
    geo = ProjectionGeometry("parallel", 24, 2.0)
    lateral = DRRProjector(geo, ["lateral"])(vol, (2.0,) * 3)
    # rotate +90 deg about z: the lateral source direction (+x) becomes the frontal one (-y)
    rotated = torch.rot90(vol, k=-1, dims=(2, 3))
    frontal = DRRProjector(geo, ["frontal"])(rotated, (2.0,) * 3)
    assert torch.allclose(lateral, frontal, atol=1e-4)


def test_general_angle_path_agrees_with_separable_path():
    """A cone view at 90 deg is separable; 90 + 1e-4 deg takes the general path and must give the same image."""
    torch.manual_seed(3)
    vol = torch.rand(1, 1, 24, 20, 28)
    a = DRRProjector(CONE, [90.0])(vol, (3.0, 3.0, 3.0))
    b = DRRProjector(CONE, [90.0001])(vol, (3.0, 3.0, 3.0))
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_x2ctgan_preset_and_half_precision_input():
    """Half-precision input under autocast is rendered in float32: same image as a float32 input."""
    geo = get_geometry("x2ctgan", pixels=32)
    assert geo.source_to_isocenter == 541 and geo.source_to_detector == 949
    assert math.isclose(geo.detector_extent, 500.0)
    torch.manual_seed(6)
    hu = torch.rand(1, 1, 16, 16, 16) * 1500 - 1000
    ref = DRR(geo)(hu, (20.0, 20.0, 20.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DRR(geo)(hu.bfloat16(), (20.0, 20.0, 20.0))
    assert out.dtype == torch.float32 and out.shape == (1, 2, 32, 32)
    assert torch.allclose(out, ref, rtol=0.02, atol=0.02)  # only the bfloat16 rounding of the input differs
    assert ref.max() > 0.5


def test_rejects_bad_shapes():
    proj = DRRProjector(PARALLEL)
    with pytest.raises(ValueError, match="B, 1, X, Y, Z"):
        proj(torch.zeros(16, 16, 16), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        proj(torch.zeros(1, 1, 8, 8, 8), (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        proj(torch.zeros(1, 1, 8, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(4)
    vol = torch.rand(2, 1, 32, 32, 32)
    for views in [("frontal", "lateral"), (30.0,)]:
        proj = DRRProjector(CONE, views)
        cpu = proj(vol, (3.0,) * 3)
        x = vol.cuda().requires_grad_()
        gpu = proj(x, (3.0,) * 3)
        gpu.sum().backward()
        assert torch.allclose(cpu, gpu.cpu(), rtol=1e-4, atol=1e-4)
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("views", [("frontal", "lateral"), (30.0, 135.0)], ids=["separable", "general"])
def test_backproject_is_the_adjoint(views):
    torch.manual_seed(5)
    proj = DRRProjector(CONE, views)
    x = torch.rand(2, 1, 12, 14, 16)
    sp = (5.0, 4.0, 3.0)
    y = torch.randn(2, len(views), 64, 64, requires_grad=True)
    bp = proj.backproject(y, x.shape[2:], sp)
    assert bp.shape == (2, len(views), 12, 14, 16)
    lhs = (proj(x, sp).double() * y.detach().double()).sum()
    rhs = (x.double() * bp.detach().double().sum(1, keepdim=True)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-4)
    bp.sum().backward()  # differentiable in the detector values
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
