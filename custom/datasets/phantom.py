"""Procedural chest CT phantoms in Hounsfield units, in two styles.

``basic`` (the default; every shipped model was trained and measured on it): a torso with a fat layer, two lungs
with a vessel tree, heart and descending aorta, vertebrae with discs and spinal canal, a sloping rib cage, sternum,
and lung nodules. Its output for a seed is frozen: changing it would make the model cards false.

``realistic`` (opt-in): closer to real chest CTs. A torso with a fat layer (thin to obese), narrowing to the neck
above the shoulders, two lungs with a vessel tree, trachea and main bronchi, heart, ascending aorta, arch and
descending aorta, pulmonary trunk, vertebrae with discs and spinal canal, a sloping rib cage, sternum, scapulae,
clavicles, arms beside the body or raised above the head (humerus with cortex and marrow inside soft tissue),
breasts in some seeds, contrast-filled vessels in some seeds, the scanner table below the back in most seeds, and
lung nodules. Like a real scan, only a slab along the body axis may be covered and only a cylinder around the
isocentre is reconstructed: outside them the volume is air. The traits vary with the seed (:func:`phantom_traits`).

In both styles sizes, positions, rib spacing and nodule count vary with the seed, and the same seed and style always
give the same volume. The volume is a cube of ``fov`` mm sampled at ``size`` voxels per side, on canonical RAS axes
(axis 0 to the patient's right, 1 to anterior, 2 to superior) with the isocentre at its centre, like the output of
:func:`custom.core.ct.preprocess_ct`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AIR, LUNG, FAT, SOFT, BLOOD, DISC, CSF = -1000.0, -850.0, -100.0, 40.0, 45.0, 80.0, 15.0
PHANTOM_STYLES = ("basic", "realistic")
# peak memory of chest_phantom per voxel of the cube: coordinate grids, occupancies and the volume in float32.
# basic: 92 bytes at 128^3, rounded up. realistic: growth of ru_maxrss over a run, one thread: 106 bytes at 128^3
# and 165 at 192^3, where the allocator keeps more; rounded up.
PHANTOM_BYTES_PER_VOXEL = {"basic": 100, "realistic": 170}

_TRAIT_KEYS = ("habitus", "arms", "table", "pad", "breasts", "contrast", "coverage", "scan_radius")


def phantom_traits(seed: int = 0) -> dict:
    """The patient-level traits a seed draws (independent of ``size`` and ``fov``).

    Keys: ``habitus`` (0 thin .. 1 obese), ``arms`` (pose of the right and left arm, ``"down"`` or ``"up"``),
    ``table`` (scanner table present), ``pad`` (mattress thickness in mm on the table, 0 for none), ``breasts``,
    ``contrast`` (HU of contrast-filled arteries, 0 for a scan without contrast), ``coverage`` (None for the whole
    cube, else the mm the covered slab reaches below the lung bases and above the apices), ``scan_radius`` (mm of
    the reconstructed cylinder around the isocentre).
    """
    rng = np.random.default_rng([int(seed), 20240607])
    habitus = float(rng.beta(1.6, 2.2))
    pose = rng.random()
    if pose < 0.45:
        arms = ("up", "up")
    elif pose < 0.9:
        arms = ("down", "down")
    else:
        arms = ("up", "down") if rng.random() < 0.5 else ("down", "up")
    table = bool(rng.random() < 0.8)
    pad = float(rng.uniform(8, 35)) if rng.random() < 0.35 else 0.0
    breasts = bool(rng.random() < 0.35)
    contrast = float(rng.uniform(150, 350)) if rng.random() < 0.4 else 0.0
    coverage = (float(rng.uniform(5, 50)), float(rng.uniform(8, 40))) if rng.random() < 0.4 else None
    scan_radius = float(rng.uniform(150, 250))
    return {
        "habitus": habitus,
        "arms": arms,
        "table": table,
        "pad": pad,
        "breasts": breasts,
        "contrast": contrast,
        "coverage": coverage,
        "scan_radius": scan_radius,
    }


def _check_traits(traits: dict) -> None:
    """Refuse trait overrides that the generator would misread (a string for ``arms`` iterates by character)."""
    arms = traits["arms"]
    if not (isinstance(arms, (tuple, list)) and len(arms) == 2 and all(a in ("up", "down") for a in arms)):
        raise ValueError(f"traits: arms must be a pair of 'up'/'down' (right, left), got {arms!r}")
    if not 0.0 <= float(traits["habitus"]) <= 1.0:
        raise ValueError(f"traits: habitus must be in [0, 1] (thin .. obese), got {traits['habitus']!r}")
    for key in ("pad", "contrast"):
        if float(traits[key]) < 0:
            raise ValueError(f"traits: {key} must be >= 0, got {traits[key]!r}")
    if float(traits["scan_radius"]) <= 0:
        raise ValueError(f"traits: scan_radius must be > 0 mm, got {traits['scan_radius']!r}")
    cov = traits["coverage"]
    if cov is not None and not (isinstance(cov, (tuple, list)) and len(cov) == 2 and min(map(float, cov)) >= 0):
        raise ValueError(f"traits: coverage must be None or two margins >= 0 mm (below, above), got {cov!r}")


def _smooth_step(d: torch.Tensor, width: float) -> torch.Tensor:
    """Partial-volume occupancy of a signed distance ``d`` (negative inside) with edge width ``width`` mm."""
    return torch.sigmoid(-d / max(width, 1e-3))


def _paint(vol: torch.Tensor, occ: torch.Tensor, value) -> None:
    vol.mul_(1 - occ).add_(occ * value)


def _segment_distance(px, py, pz, a, b):
    """Distance from points to segment a-b (mm)."""
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float((ab**2).sum() + 1e-9)
    t = t.clamp(0, 1)
    return torch.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


class _Grid:
    """Voxel-centre coordinates (mm) of the cube and sub-boxes of it, so small structures cost small work."""

    def __init__(self, size: int, fov: float):
        self.size, self.fov, self.sp = size, fov, fov / size
        g = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * self.sp
        self.x, self.y, self.z = g.view(-1, 1, 1), g.view(1, -1, 1), g.view(1, 1, -1)

    def box(self, lo, hi):
        """Slices of the voxels between ``lo`` and ``hi`` (mm, per axis) and their coordinates, or None if empty."""
        i0 = np.clip(np.floor((np.asarray(lo) + self.fov / 2) / self.sp - 1).astype(int), 0, self.size)
        i1 = np.clip(np.ceil((np.asarray(hi) + self.fov / 2) / self.sp + 1).astype(int), 0, self.size)
        if np.any(i1 <= i0):
            return None
        sl = tuple(slice(int(s), int(e)) for s, e in zip(i0, i1))
        return sl, self.x[sl[0]], self.y[:, sl[1]], self.z[:, :, sl[2]]


def _capsule(grid: _Grid, a, b, r: float):
    """Signed distance (mm) to a capsule a-b of radius r on its bounding box: (slices, distance) or None."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    m = r + 3 * grid.sp
    box = grid.box(np.minimum(a, b) - m, np.maximum(a, b) + m)
    if box is None:
        return None
    sl, px, py, pz = box
    return sl, _segment_distance(px, py, pz, a, b) - r


def _paint_tube(vol, grid, edge, segments, value, where=None, body=None) -> None:
    """Paint capsules (a, b, r) with ``value``, optionally only where the occupancy ``where`` is (restricted to
    the boxes) and recording the painted occupancy into ``body``."""
    for a, b, r in segments:
        cap = _capsule(grid, a, b, r)
        if cap is None:
            continue
        sl, d = cap
        occ = _smooth_step(d, edge)
        if where is not None:
            occ = occ * where[sl]
        _paint(vol[sl], occ, value)
        if body is not None:
            body[sl] = torch.maximum(body[sl], occ)


def _paint_bone(vol, grid, edge, segments, cortex_hu, marrow_hu, cortex_mm, body=None) -> None:
    """Long bone: capsules with a cortical shell ``cortex_mm`` thick around marrow."""
    _paint_tube(vol, grid, edge, segments, cortex_hu, body=body)
    _paint_tube(vol, grid, edge, [(a, b, max(r - cortex_mm, 0.5)) for a, b, r in segments], marrow_hu)


def _vessel_tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float, depth: int):
    """Segments (a, b, radius) of a branching tree that spreads from the hilum into the lung."""
    segments = []
    stack = [(root, direction, radius, depth)]
    while stack:
        start, d, r, level = stack.pop()
        length = rng.uniform(18, 35) * (0.8 ** (3 - level) if level < 3 else 1.0)
        d = d / np.linalg.norm(d)
        end = start + d * length
        segments.append((start, end, r))
        if level > 0:
            for _ in range(2):
                new_d = d + rng.normal(0, 0.55, 3)
                stack.append((end, new_d, max(r * 0.72, 0.6), level - 1))
    return segments


def _torso_distance(grid: _Grid, cx, cy, ax, ay_front, ay_back, wx, wy, back_power):
    """Approximate signed distance (mm, negative inside) to an elliptic torso with a flatter back (a patient lying
    on it) whose half-axes shrink by the per-slice factors ``wx``, ``wy`` (1D over z) towards the neck."""
    ax, ay_front, ay_back = (torch.as_tensor(v, dtype=torch.float32) for v in (ax, ay_front, ay_back))
    dy = grid.y - cy
    yn = torch.where(dy > 0, dy / ay_front, dy / ay_back).abs()
    yterm = torch.where(dy > 0, yn**2, yn**back_power)  # 1D: cheap
    xterm = ((grid.x - cx) / ax) ** 2
    ell = torch.sqrt(xterm / wx**2 + yterm / wy ** torch.where(dy > 0, 2.0, back_power))
    return (ell - 1) * torch.minimum(ax, ay_front) * torch.minimum(wx, wy)


def check_style(style: str) -> str:
    """``style`` if it names a phantom style, else a ValueError listing them."""
    if style not in PHANTOM_STYLES:
        raise ValueError(f"unknown phantom style {style!r}; choose one of {', '.join(PHANTOM_STYLES)}")
    return style


def chest_phantom(
    seed: int = 0,
    size: int = 128,
    fov: float = 320.0,
    noise_hu: float = 12.0,
    *,
    style: str = "basic",
    traits: dict | None = None,
) -> torch.Tensor:
    """A synthetic chest CT.

    Args:
        seed: anatomy and noise seed; equal seeds (and styles) give equal volumes.
        size: voxels per side of the cubic volume.
        fov: side of the cube in mm (voxel spacing is ``fov / size``).
        noise_hu: standard deviation of the added quantum-like noise in HU.
        style: ``"basic"`` (the phantoms the shipped models were trained on) or ``"realistic"`` (see the module).
        traits: realistic style only: overrides of the seed's :func:`phantom_traits`
            (e.g. ``{"arms": ("down", "down")}``).

    Returns:
        float32 tensor (size, size, size) in HU, canonical RAS axes.
    """
    check_style(style)
    if size < 8:
        raise ValueError(f"size must be at least 8 voxels, got {size}")
    if style == "basic":
        if traits:
            raise ValueError("traits apply to the realistic style only; pass style='realistic'")
        return _basic_phantom(seed, size, fov, noise_hu)
    drawn = phantom_traits(seed)
    if traits:
        unknown = set(traits) - set(_TRAIT_KEYS)
        if unknown:
            raise ValueError(f"unknown phantom traits {sorted(unknown)}; known: {list(_TRAIT_KEYS)}")
        drawn.update(traits)
        _check_traits(drawn)
    return _realistic_phantom(seed, size, fov, noise_hu, drawn)


def _scanner_blur(vol: torch.Tensor) -> torch.Tensor:
    """Slight blur (scanner point spread): a separable [1/4, 1/2, 1/4] kernel along each axis."""
    k = torch.tensor([0.25, 0.5, 0.25])
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = 3
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 1
        vol = F.conv3d(F.pad(vol[None, None], pad, mode="replicate"), k.view(shape))[0, 0]
    return vol


def _nodule(rng, centre, lung_size, lung_z) -> tuple[np.ndarray, float]:
    """Centre (mm) and radius (3-12 mm) of a random nodule inside one of the lungs of
    :func:`_paint_lungs_and_upper_abdomen` (same ``lung_size`` and ``lung_z``; ``centre``: the body's (cx, cy))."""
    (cx, cy), (lung_ax, lung_ay, lung_dx) = centre, lung_size
    side = rng.choice([-1, 1])
    c = np.array(
        [
            cx + side * lung_dx + rng.normal(0, lung_ax * 0.3),
            cy + rng.normal(0, lung_ay * 0.3),
            rng.uniform(lung_z[0] + 30, lung_z[1] - 20),
        ]
    )
    return c, rng.uniform(3, 12)


def _paint_lungs_and_upper_abdomen(vol, xyz, rng, edge, torso, lung_size, lung_z):
    """Paint both lungs (ellipsoids beside the mediastinum, rounded top, domed diaphragm), then the liver under the
    right hemidiaphragm and a gastric air bubble under the left one; return the lung occupancy and the two hila.

    ``xyz``: broadcastable coordinate grids (mm); ``torso``: (cx, cy, ax, ay) centre and half-axes of the body;
    ``lung_size``: (half-width, half-depth, lateral offset) of each lung; ``lung_z``: (bottom, top) along the body.
    Both phantom styles share this so that their organs stay alike; it draws from ``rng`` in a fixed order.
    """
    x, y, z = xyz
    cx, cy, ax, ay = torso
    lung_ax, lung_ay, lung_dx = lung_size
    lung_z0, lung_z1 = lung_z
    lungs = torch.zeros_like(vol)
    hili = []
    for side in (-1, 1):
        lx = cx + side * lung_dx
        zc, zr = (lung_z0 + lung_z1) / 2, (lung_z1 - lung_z0) / 2
        r = torch.sqrt(((x - lx) / lung_ax) ** 2 + ((y - cy + 5) / lung_ay) ** 2 + ((z - zc) / zr) ** 4)
        dome = lung_z0 + 25 * (1 - ((x - lx) / lung_ax) ** 2).clamp(min=0) - 0.15 * (y - cy)
        occ = _smooth_step((r - 1) * lung_ax, edge) * _smooth_step(dome - z, edge)
        lungs = torch.maximum(lungs, occ)
        hili.append(np.array([lx - side * lung_ax * 0.55, cy, zc + 10.0]))
    _paint(vol, lungs, LUNG)
    lv = torch.sqrt(
        ((x - cx - ax * 0.3) / (ax * 0.55)) ** 2 + ((y - cy) / (ay * 0.75)) ** 2 + ((z - lung_z0 + 55) / 70.0) ** 2
    )
    _paint(vol, _smooth_step((lv - 1) * 60, edge) * (1 - lungs), rng.uniform(50, 70))
    gb = torch.sqrt((x - cx + ax * 0.35) ** 2 + (y - cy - ay * 0.2) ** 2 + (z - lung_z0 + 25) ** 2)
    _paint(vol, _smooth_step(gb - rng.uniform(12, 25), edge) * (z < lung_z0 - 10).float(), AIR + 50)
    return lungs, hili


def _basic_phantom(seed: int, size: int, fov: float, noise_hu: float) -> torch.Tensor:
    """The basic style. Keep every random draw and operation as it is: the shipped weights and model cards rest on
    these exact volumes (``tests/datasets/test_phantom.py`` pins them)."""
    rng = np.random.default_rng(seed)
    sp = fov / size
    g = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * sp
    x, y, z = g.view(-1, 1, 1), g.view(1, -1, 1), g.view(1, 1, -1)
    edge = 0.6 * sp  # partial-volume edge width

    # Torso: elliptic cylinder, slightly tapered towards the neck.
    ax, ay = rng.uniform(135, 165), rng.uniform(95, 120)
    cx, cy = rng.normal(0, 4), rng.normal(-5, 4)
    taper = 1.0 - 0.12 * torch.clamp((z - 60) / 100, 0, 1)
    ell = torch.sqrt(((x - cx) / (ax * taper)) ** 2 + ((y - cy) / (ay * taper)) ** 2)  # 1 on the skin
    scale = min(ax, ay)
    vol = torch.full((size, size, size), AIR)
    _paint(vol, _smooth_step((ell - 1) * scale, edge), FAT)
    fat = rng.uniform(8, 22)
    _paint(vol, _smooth_step((ell - 1) * scale + fat, edge), SOFT)

    # Lungs: ellipsoids left and right of the mediastinum, with a rounded top and a domed diaphragm below.
    lung_z0 = rng.uniform(-110, -80)
    lung_z1 = rng.uniform(90, 125)
    lung_ax, lung_ay = ax * rng.uniform(0.36, 0.42), ay * rng.uniform(0.62, 0.72)
    lung_dx = ax * rng.uniform(0.42, 0.5)
    lungs, hili = _paint_lungs_and_upper_abdomen(
        vol, (x, y, z), rng, edge, (cx, cy, ax, ay), (lung_ax, lung_ay, lung_dx), (lung_z0, lung_z1)
    )

    # Heart between the lungs, shifted to the patient's left and forward; it overlaps the medial lungs.
    hx, hy, hz = cx - rng.uniform(10, 30), cy + rng.uniform(15, 30), lung_z0 + rng.uniform(35, 60)
    hr = rng.uniform(50, 65)
    heart = torch.sqrt(((x - hx) / hr) ** 2 + ((y - hy) / (hr * 0.8)) ** 2 + ((z - hz) / (hr * 0.9)) ** 2)
    _paint(vol, _smooth_step((heart - 1) * hr, edge), BLOOD + 5)

    # Vertebral column: bodies with cortical rims, discs, spinal canal and spinous processes.
    sy = cy - ay * 0.62
    vr = rng.uniform(16, 21)
    pitch = rng.uniform(24, 30)
    body = torch.sqrt((x - cx) ** 2 + (y - sy) ** 2) - vr
    disc_phase = torch.remainder(z + rng.uniform(0, pitch), pitch)
    is_disc = ((disc_phase < 5.0).float() + 0.0).expand_as(vol)
    cortical = rng.uniform(1000, 1400)
    spine = _smooth_step(body, edge)
    _paint(vol, spine * (1 - is_disc), rng.uniform(220, 320))
    _paint(vol, spine * (1 - is_disc) * (body > -2.5).float(), cortical)
    _paint(vol, spine * is_disc, DISC)
    canal_y = sy - vr - 9
    _paint(vol, _smooth_step(torch.sqrt((x - cx) ** 2 + (y - canal_y) ** 2) - 7.5, edge), CSF)
    arch = torch.sqrt((x - cx) ** 2 + (y - canal_y) ** 2)
    _paint(vol, _smooth_step(torch.abs(arch - 10.0) - 2.5, edge) * (y < canal_y + 2).float() * (1 - is_disc), 700.0)
    spinous = torch.maximum(torch.abs(x - cx) - 3.5, torch.abs(y - (canal_y - 22)) - 10)
    _paint(vol, _smooth_step(spinous, edge) * (1 - is_disc), 500.0)

    # Descending aorta beside the spine, on the patient's left.
    ar = rng.uniform(10, 14)
    aorta = torch.sqrt((x - (cx - 25)) ** 2 + (y - (sy + vr + ar + 2)) ** 2) - ar
    _paint(vol, _smooth_step(aorta, edge) * (z < hz + 60).float(), BLOOD)

    # Rib cage: periodic bands on an inner elliptic shell that slope down towards the front.
    theta = torch.atan2(y - cy, x - cx)  # -pi/2 at the back, +pi/2 at the front
    rib_pitch = rng.uniform(20, 28)
    rib_r = rng.uniform(3.5, 5.0)
    shell = (ell - (1 - (fat + 10) / scale)) * scale  # mm from the rib centre line
    slope = rng.uniform(25, 45)
    droop = rng.uniform(12, 25)  # ribs fall from the spine towards the flanks
    phase = z + slope * (torch.sin(theta) + 1) / 2 + droop * torch.abs(torch.cos(theta))
    dz = torch.remainder(phase, rib_pitch) - rib_pitch / 2
    rib_d = torch.sqrt(shell**2 + dz**2) - rib_r
    ribs = _smooth_step(rib_d, edge) * (z > lung_z0 - 25).float() * (z < lung_z1 + 5).float()
    ribs = ribs * (torch.abs(theta - math.pi / 2) > 0.35).float()  # costal cartilage gap at the sternum
    _paint(vol, ribs, rng.uniform(500, 800))
    _paint(vol, ribs * (rib_d > -1.2).float(), rng.uniform(1000, 1400))
    sternum = torch.maximum(torch.abs(x - cx) - 14, torch.abs(y - (cy + ay - fat - 12)) - 6)
    _paint(vol, _smooth_step(sternum, edge) * (z > hz - 40).float() * (z < lung_z1).float(), 400.0)

    # Pulmonary vessels and nodules, inside the lungs only.
    vessels = torch.zeros_like(vol)
    for side, hilum in zip((-1, 1), hili):
        for _ in range(3):
            direction = np.array([side * rng.uniform(0.3, 1.0), rng.normal(0, 0.6), rng.normal(0, 1.0)])
            for a, b, r in _vessel_tree(rng, hilum, direction, rng.uniform(3.0, 5.0), 3):
                lo = np.minimum(a, b) - r - 2 * sp
                hi = np.maximum(a, b) + r + 2 * sp
                i0 = np.clip(np.floor((lo + fov / 2) / sp).astype(int), 0, size)
                i1 = np.clip(np.ceil((hi + fov / 2) / sp).astype(int) + 1, 0, size)
                if np.any(i1 <= i0):
                    continue
                sl = tuple(slice(int(s), int(e)) for s, e in zip(i0, i1))
                d = _segment_distance(x[sl[0]], y[:, sl[1]], z[:, :, sl[2]], a, b) - r
                vessels[sl] = torch.maximum(vessels[sl], _smooth_step(d, edge))
    _paint(vol, vessels * lungs, BLOOD)
    for _ in range(int(rng.integers(0, 4))):
        c, r = _nodule(rng, (cx, cy), (lung_ax, lung_ay, lung_dx), (lung_z0, lung_z1))
        d = torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
        _paint(vol, _smooth_step(d, edge) * lungs, rng.uniform(20, 60))

    # Slight blur (scanner point spread) and noise only inside the body.
    vol = _scanner_blur(vol)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    inside = _smooth_step((ell - 1) * scale, edge)
    vol = vol + noise_hu * torch.randn(vol.shape, generator=gen) * inside
    return vol.clamp(-1024, 3071).contiguous()


def _realistic_phantom(seed: int, size: int, fov: float, noise_hu: float, traits: dict) -> torch.Tensor:
    """The realistic style, with the patient-level ``traits`` already drawn (and overridden)."""
    rng = np.random.default_rng(seed)
    grid = _Grid(size, fov)
    sp = grid.sp
    x, y, z = grid.x, grid.y, grid.z
    edge = 0.6 * sp  # partial-volume edge width

    # Body habitus: the lean torso (muscle wall) and the fat around it; fat is thinner under the back.
    h = float(traits["habitus"])
    fat = 4.0 + 40.0 * h**1.3 + rng.uniform(-2, 2)
    ax = rng.uniform(118, 148) + 12 * h  # lean half-width (mm)
    ay = rng.uniform(82, 100) + 14 * h  # lean half-depth
    cx, cy = rng.normal(0, 4), rng.normal(-5, 4)
    lung_z0 = rng.uniform(-110, -80)
    lung_z1 = rng.uniform(90, 125)
    shoulder_z = lung_z1 + rng.uniform(15, 30)
    # narrowing to the neck above the shoulders (a mild taper below them), as 1D factors over z
    rise = (z - shoulder_z) / rng.uniform(25, 40)
    neck = torch.clamp(rise, 0, 1) ** 2 * (3 - 2 * torch.clamp(rise, 0, 1))
    taper = 1.0 - 0.06 * torch.clamp((z - 20) / 100, 0, 1)
    neck_x = rng.uniform(0.42, 0.5)
    wx = taper * (1 - (1 - neck_x) * neck)
    wy = taper * (1 - 0.2 * neck)
    back_power = rng.uniform(2.3, 3.0)
    ay_back = ay + 6  # the back muscles over the spinous processes
    lean_d = _torso_distance(grid, cx, cy, ax, ay, ay_back, wx, wy, back_power)
    fat_z = fat * (1 - 0.6 * neck)
    skin_d = _torso_distance(grid, cx, cy, ax + fat_z, ay + fat_z, ay_back + 0.55 * fat_z, wx, wy, back_power)
    body = _smooth_step(skin_d, edge)  # occupancy of the patient, for noise; arms and breasts are added below
    vol = torch.full((size, size, size), AIR)
    _paint(vol, body, FAT)
    lean = _smooth_step(lean_d, edge)
    del skin_d

    # Breasts: fat with a glandular core on the front of the chest wall, spreading sideways in the supine patient.
    if traits["breasts"]:
        bz = lung_z0 + rng.uniform(25, 55)
        for side in (-1, 1):
            bx = cx + side * ax * rng.uniform(0.38, 0.5)
            front = cy + (ay + fat) * math.sqrt(max(1 - ((bx - cx) / (ax + fat)) ** 2, 0.05))
            rx, ry, rz = rng.uniform(45, 70) + 15 * h, rng.uniform(25, 55) + 20 * h, rng.uniform(40, 60)
            c = np.array([bx + side * rng.uniform(5, 20), front - 0.35 * ry, bz + rng.normal(0, 5)])
            box = grid.box(c - [rx, ry, rz], c + [rx, ry, rz])
            if box is None:
                continue
            sl, px, py, pz = box
            r = torch.sqrt(((px - c[0]) / rx) ** 2 + ((py - c[1]) / ry) ** 2 + ((pz - c[2]) / rz) ** 2)
            occ = _smooth_step((r - 1) * min(rx, ry, rz), edge) * (1 - lean[sl])
            _paint(vol[sl], occ, rng.uniform(-110, -85))
            body[sl] = torch.maximum(body[sl], occ)
            gland = _smooth_step((r - rng.uniform(0.45, 0.75)) * min(rx, ry, rz), 2 * edge) * (1 - lean[sl])
            _paint(vol[sl], gland * rng.uniform(0.3, 0.9), rng.uniform(0, 40))

    # Arms: soft tissue with a fat layer around the humerus, beside the body or raised above the head.
    arm_r = rng.uniform(36, 44) + 18 * h
    arm_fat = 2 + 0.5 * fat
    hum_r, hum_cortex = rng.uniform(10, 13), rng.uniform(2.5, 4.0)
    hum_hu, marrow_hu = rng.uniform(700, 1200), rng.uniform(200, 400)
    humeri, heads = [], []
    for side, pose in zip((1, -1), traits["arms"]):  # patient right (+x), then left
        joint = np.array([cx + side * (ax + 6 - 12 * (pose == "up")), cy + 0.05 * ay, lung_z1 + 5])
        u1, u2, u3, u4 = rng.uniform(size=4)  # as many draws for either pose: the rest of the anatomy is the same
        if pose == "down":
            shaft = joint + [side * (fat + 25 * u1 + arm_r - ax * 0.02), -15 + 50 * u2, -60]
            elbow = shaft + [side * 20 * u3, -10 + 40 * u4, -230]
        else:
            shaft = joint + [side * (0.5 * arm_r + 0.4 * fat + 15 * u1), -20 + 25 * u2, 60]
            elbow = shaft + [-side * 40 * u3, -30 + 40 * u4, 230]
        tissue = [(joint, shaft, arm_r * 0.9), (shaft, elbow, arm_r)]
        _paint_tube(vol, grid, edge, tissue, FAT, where=1 - lean, body=body)
        _paint_tube(vol, grid, edge, [(a, b, r - arm_fat) for a, b, r in tissue], SOFT, where=1 - lean)
        humeri.append((joint, elbow, hum_r))
        heads.append((joint, joint + 1e-3, hum_r * rng.uniform(1.8, 2.1)))

    _paint(vol, lean, SOFT)

    # Lungs: ellipsoids left and right of the mediastinum, with a rounded top and a domed diaphragm below.
    lung_ax, lung_ay = ax * rng.uniform(0.4, 0.46), ay * rng.uniform(0.7, 0.8)
    lung_dx = ax * rng.uniform(0.45, 0.53)
    lungs, hili = _paint_lungs_and_upper_abdomen(
        vol, (x, y, z), rng, edge, (cx, cy, ax, ay), (lung_ax, lung_ay, lung_dx), (lung_z0, lung_z1)
    )

    # Heart between the lungs, shifted to the patient's left and forward; it overlaps the medial lungs. With
    # contrast, the chambers are bright (the left side and aorta more than the right side and pulmonary arteries).
    contrast = float(traits["contrast"])
    left_hu = contrast if contrast > 0 else BLOOD
    right_hu = contrast * rng.uniform(0.55, 1.1) if contrast > 0 else BLOOD
    hx, hy, hz = cx - rng.uniform(10, 30), cy + rng.uniform(15, 30), lung_z0 + rng.uniform(35, 60)
    hr = rng.uniform(50, 65)
    heart = torch.sqrt(((x - hx) / hr) ** 2 + ((y - hy) / (hr * 0.8)) ** 2 + ((z - hz) / (hr * 0.9)) ** 2)
    _paint(vol, _smooth_step((heart - 1) * hr, edge), BLOOD + 5)
    del heart
    if contrast > 0:
        for dx, dy, value in ((-0.3, -0.15, left_hu), (0.3, 0.2, right_hu)):
            c = np.array([hx + dx * hr, hy + dy * hr, hz])
            _paint_tube(vol, grid, edge, [(c, c + [0, 0, 10], hr * rng.uniform(0.42, 0.52))], value)

    # Vertebral column: bodies with cortical rims, discs, spinal canal and spinous processes.
    sy = cy - ay * 0.62
    vr = rng.uniform(16, 21)
    pitch = rng.uniform(24, 30)
    body_d = torch.sqrt((x - cx) ** 2 + (y - sy) ** 2) - vr
    disc_phase = torch.remainder(z + rng.uniform(0, pitch), pitch)
    not_disc = (disc_phase >= 5.0).float()  # 1D over z
    cortical = rng.uniform(1000, 1400)
    spine = _smooth_step(body_d, edge)
    _paint(vol, spine * not_disc, rng.uniform(220, 320))
    _paint(vol, spine * not_disc * (body_d > -2.5).float(), cortical)
    _paint(vol, spine * (1 - not_disc), DISC)
    del spine, body_d
    canal_y = sy - vr - 9
    arch = torch.sqrt((x - cx) ** 2 + (y - canal_y) ** 2)  # 2D
    _paint(vol, _smooth_step(arch - 7.5, edge), CSF)
    _paint(vol, _smooth_step(torch.abs(arch - 10.0) - 2.5, edge) * (y < canal_y + 2).float() * not_disc, 700.0)
    spinous = torch.maximum(torch.abs(x - cx) - 3.5, torch.abs(y - (canal_y - 18)) - 8)
    _paint(vol, _smooth_step(spinous, edge) * not_disc * lean, 500.0)

    # Trachea down the mediastinum to the carina, and the main bronchi to the hila.
    tr_r = rng.uniform(8, 11)
    carina = np.array([cx + rng.normal(0, 3), sy + vr + tr_r + rng.uniform(8, 16), (hili[0][2] + hili[1][2]) / 2 + 15])
    airway = [(carina + [0, -0.1 * (fov + 200), fov + 200], carina, tr_r)]
    airway += [(carina, hilum + [0, 0, 5], tr_r * 0.75) for hilum in hili]
    _paint_tube(vol, grid, edge, airway, AIR + 30, where=lean)
    _paint_tube(vol, grid, edge, [(a, b, max(r - 2.0, 0.5)) for a, b, r in airway], AIR, where=lean)

    # Aorta: ascending from the heart, the arch over the left main bronchus, descending beside the spine; the
    # pulmonary trunk from the right ventricle forward and up, splitting to the hila.
    ar = rng.uniform(10, 14)
    desc_x, desc_y = cx - 25, sy + vr + ar + 2
    root = np.array([hx + 0.25 * hr, hy - 0.1 * hr, hz + 0.4 * hr])
    top = np.array([cx + rng.uniform(-5, 8), cy + rng.uniform(0, 15), carina[2] + rng.uniform(20, 35)])
    arch_end = np.array([desc_x, desc_y, top[2] - 10])
    aorta = [(root, top, ar * 1.15), (top, arch_end, ar * 1.05), (arch_end, [desc_x, desc_y, -fov], ar)]
    _paint_tube(vol, grid, edge, aorta, left_hu, where=lean)
    trunk0 = np.array([hx + 0.05 * hr, hy + 0.45 * hr, hz + 0.45 * hr])
    split = np.array([hx + 5, carina[1] + 15, carina[2] - 5])
    pulmonary = [(trunk0, split, ar * 1.1)] + [(split, hilum, ar * 0.8) for hilum in hili]
    _paint_tube(vol, grid, edge, pulmonary, right_hu, where=lean)

    # Rib cage: periodic bands on a shell inside the lean torso that slope down towards the front.
    theta = torch.atan2(y - cy, x - cx)  # -pi/2 at the back, +pi/2 at the front (2D)
    rib_pitch = rng.uniform(20, 28)
    rib_r = rng.uniform(3.5, 5.0)
    shell = lean_d + 10  # mm from the rib centre line
    slope = rng.uniform(25, 45)
    droop = rng.uniform(12, 25)  # ribs fall from the spine towards the flanks
    phase = z + slope * (torch.sin(theta) + 1) / 2 + droop * torch.abs(torch.cos(theta))
    dz = torch.remainder(phase, rib_pitch) - rib_pitch / 2
    del phase
    rib_d = torch.sqrt(shell**2 + dz**2) - rib_r
    del dz
    ribs = _smooth_step(rib_d, edge) * ((z > lung_z0 - 25) & (z < lung_z1 + 5)).float()
    ribs = ribs * (torch.abs(theta - math.pi / 2) > 0.35).float()  # costal cartilage gap at the sternum
    _paint(vol, ribs, rng.uniform(500, 800))
    _paint(vol, ribs * (rib_d > -1.2).float(), rng.uniform(1000, 1400))
    del ribs, rib_d
    front_y = cy + ay - 12
    sternum = torch.maximum(torch.abs(x - cx) - 14, torch.abs(y - front_y) - 6)
    sternum_top = lung_z1 + rng.uniform(-10, 5)
    _paint(vol, _smooth_step(sternum, edge) * ((z > hz - 40) & (z < sternum_top)).float(), 400.0)

    # Scapulae: thin triangular plates behind the posterior-lateral ribs, from the shoulder down; a raised arm
    # swings the blade outwards. Clavicles: from the top of the sternum out to the shoulder.
    blade = torch.abs(shell + rng.uniform(12, 18)) - rng.uniform(2.0, 3.0)  # a plate just outside the ribs
    del shell
    u = torch.abs(theta + math.pi / 2)  # angle from the back midline: 0 at the spine
    for side, pose in zip((1, -1), traits["arms"]):
        z_top = lung_z1 + rng.uniform(-5, 10)
        z_bot = z_top - rng.uniform(120, 155)
        t = ((z_top - z) / (z_top - z_bot)).clamp(0, 1)  # 1D
        swing = 0.25 if pose == "up" else 0.0
        u_med = 0.35 + swing + 0.15 * t + rng.uniform(-0.05, 0.05)
        u_lat = 1.15 + swing - 0.6 * t
        on_side = ((x - cx) * side > 0).float()
        d = torch.maximum(blade, torch.maximum((u_med - u) * ax, (u - u_lat) * ax))
        d = torch.maximum(d, torch.maximum(z - z_top, z_bot - z))
        _paint(vol, _smooth_step(d, edge) * on_side, rng.uniform(600, 900))
    del blade, u, theta
    clav_r = rng.uniform(5.5, 7.5)
    for side, (joint, _, _) in zip((1, -1), humeri):
        medial = np.array([cx + side * 16, front_y - 5, sternum_top + 5])
        mid = np.array([cx + side * ax * 0.45, front_y + 2 - 0.1 * ay, sternum_top + rng.uniform(10, 20)])
        lateral = joint + [-side * 10, rng.uniform(-5, 10), 20]
        _paint_bone(vol, grid, edge, [(medial, mid, clav_r), (mid, lateral, clav_r)], 800.0, 300.0, 2.5)
    _paint_bone(vol, grid, edge, humeri, hum_hu, marrow_hu, hum_cortex)
    for a, b, r in heads:
        _paint_bone(vol, grid, edge, [(a, b, r)], hum_hu * 0.7, marrow_hu, 2.0)

    # Pulmonary vessels and nodules, inside the lungs only.
    vessels = torch.zeros_like(vol)
    for side, hilum in zip((-1, 1), hili):
        for _ in range(3):
            direction = np.array([side * rng.uniform(0.3, 1.0), rng.normal(0, 0.6), rng.normal(0, 1.0)])
            for a, b, r in _vessel_tree(rng, hilum, direction, rng.uniform(3.0, 5.0), 3):
                cap = _capsule(grid, a, b, r)
                if cap is not None:
                    sl, d = cap
                    vessels[sl] = torch.maximum(vessels[sl], _smooth_step(d, edge))
    _paint(vol, vessels * lungs, right_hu * rng.uniform(0.6, 0.9) if contrast > 0 else BLOOD)
    del vessels
    for _ in range(int(rng.integers(0, 4))):
        c, r = _nodule(rng, (cx, cy), (lung_ax, lung_ay, lung_dx), (lung_z0, lung_z1))
        box = grid.box(c - r - 3 * sp, c + r + 3 * sp)
        if box is not None:
            sl, px, py, pz = box
            d = torch.sqrt((px - c[0]) ** 2 + (py - c[1]) ** 2 + (pz - c[2]) ** 2) - r
            _paint(vol[sl], _smooth_step(d, edge) * lungs[sl], rng.uniform(20, 60))
    del lungs

    # Scanner table under the back: a mattress (sometimes), then a foam plate curving up at the sides with thin
    # carbon shells; the same in every slice.
    if traits["table"]:
        yb = float((cy - (ay_back + 0.55 * fat)) - float(traits["pad"]) - rng.uniform(0, 4))
        curve = rng.uniform(500, 1000)
        surf = yb + (x - cx) ** 2 / (2 * curve)  # (S, 1, 1): top of the plate
        core = rng.uniform(20, 40)
        half = rng.uniform(210, 250)
        width = _smooth_step(torch.abs(x - cx) - half, edge)
        plate = _smooth_step(torch.abs(y - (surf - core / 2)) - core / 2, edge) * width  # (S, S, 1)
        shell_t = rng.uniform(1.5, 3.0)
        bottom = _smooth_step(torch.abs(y - (surf - core - shell_t / 2)) - shell_t / 2, edge) * width
        top = _smooth_step(torch.abs(y - (surf + 0.5)) - 0.5, edge) * width
        free = 1 - body
        body = torch.maximum(body, torch.maximum(plate, bottom))  # the table is noisy like the patient
        _paint(vol, plate * free, rng.uniform(-250, -100))
        _paint(vol, bottom * free, rng.uniform(100, 300))
        _paint(vol, top * free, rng.uniform(0, 200))
        if traits["pad"] > 0:
            pad = _smooth_step(torch.abs(y - (surf + 1 + traits["pad"] / 2)) - traits["pad"] / 2, edge)
            pad = pad * _smooth_step(torch.abs(x - cx) - half + 20, edge)
            _paint(vol, pad * free, rng.uniform(-900, -700))
            body = torch.maximum(body, pad)
        del free

    # Slight blur (scanner point spread) and noise only inside the body and the table.
    vol = _scanner_blur(vol)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    vol.add_(noise_hu * torch.randn(vol.shape, generator=gen) * body)
    del body

    # What the scanner reconstructed: a cylinder around the isocentre and, in some scans, only a slab along the
    # body axis (from below the lung bases to above the apices); the rest is air.
    covered = _smooth_step(torch.sqrt(x**2 + y**2) - float(traits["scan_radius"]), edge)  # (S, S, 1)
    if traits["coverage"] is not None:
        below, above = traits["coverage"]
        slab = _smooth_step(
            torch.abs(z - (lung_z1 + above + lung_z0 - below) / 2) - (lung_z1 + above - lung_z0 + below) / 2, 0.3 * sp
        )
        covered = covered * slab
    vol.sub_(AIR).mul_(covered).add_(AIR)
    return vol.clamp(-1024, 3071).contiguous()


def phantom_affine(size: int, fov: float = 320.0):
    """RAS affine of a phantom: isotropic ``fov / size`` mm voxels, centred on the origin."""
    from custom.core.transforms import cube_affine

    return cube_affine(size, fov)


def _stored_phantom(path) -> tuple:
    """Voxel shape and style of a stored phantom, from its header only (the style is the last word of its
    description when it is not the basic one, so files written before styles existed read as basic)."""
    import nibabel as nib

    img = nib.load(str(path))
    words = bytes(img.header["descrip"]).split(b"\0")[0].decode(errors="replace").split()
    style = words[-1] if words and words[-1] in PHANTOM_STYLES else "basic"
    return tuple(int(n) for n in img.shape[:3]), style


def write_phantoms(
    out_dir, count: int = 8, size: int = 128, seed: int = 0, fov: float = 320.0, progress=True, style: str = "basic"
):
    """Write ``count`` phantoms (seeds ``seed`` .. ``seed + count - 1``) of ``style`` as ``phantom_<seed>.nii.gz``
    in HU.

    Existing files of the same size and style are kept, so an interrupted run continues where it stopped; one of
    another size or style is written again. Returns the file paths.
    """
    from pathlib import Path

    import numpy as np
    from tqdm.auto import tqdm

    from custom.core.io import remove_stale_temporaries, save_nifti

    check_style(style)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # partial files of a killed run
    paths = []
    want = ((int(size),) * 3, style)
    for s in tqdm(range(int(seed), int(seed) + int(count)), desc="phantoms", unit="ct", disable=not progress):
        path = out / f"phantom_{s:05d}.nii.gz"
        if not path.is_file() or _stored_phantom(path) != want:
            vol = chest_phantom(s, size, fov, style=style)
            # the basic description stays as it always was, so stored basic phantoms are byte-identical
            description = f"phantom {s}" if style == "basic" else f"phantom {s} {style}"
            save_nifti(vol.numpy(), phantom_affine(size, fov), path, dtype=np.int16, description=description)
        paths.append(path)
    return paths
