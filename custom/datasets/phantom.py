"""Procedural chest CT phantoms in Hounsfield units.

Each seed gives a distinct synthetic patient: torso with a fat layer, two lungs with a vessel tree, heart and
descending aorta, vertebrae with discs and spinal canal, a sloping rib cage, sternum, and lung nodules. Sizes,
positions, rib spacing and nodule count vary with the seed, and the same seed always gives the same volume.

The volume is a cube of ``fov`` mm sampled at ``size`` voxels per side, on canonical RAS axes (axis 0 to the
patient's right, 1 to anterior, 2 to superior) with the isocentre at its centre, like the output of
:func:`custom.core.ct.preprocess_ct`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AIR, LUNG, FAT, SOFT, BLOOD, DISC, CSF = -1000.0, -850.0, -100.0, 40.0, 45.0, 80.0, 15.0
# peak memory of chest_phantom per voxel of the cube: coordinate grids, occupancies and the volume in float32
# (measured: 92 bytes at 128^3, rounded up)
PHANTOM_BYTES_PER_VOXEL = 100


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


def chest_phantom(seed: int = 0, size: int = 128, fov: float = 320.0, noise_hu: float = 12.0) -> torch.Tensor:
    """A synthetic chest CT.

    Args:
        seed: anatomy and noise seed; equal seeds give equal volumes.
        size: voxels per side of the cubic volume.
        fov: side of the cube in mm (voxel spacing is ``fov / size``).
        noise_hu: standard deviation of the added quantum-like noise in HU.

    Returns:
        float32 tensor (size, size, size) in HU, canonical RAS axes.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 voxels, got {size}")
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

    # Liver under the right hemidiaphragm and a gastric air bubble under the left one.
    lv = torch.sqrt(
        ((x - cx - ax * 0.3) / (ax * 0.55)) ** 2 + ((y - cy) / (ay * 0.75)) ** 2 + ((z - lung_z0 + 55) / 70.0) ** 2
    )
    _paint(vol, _smooth_step((lv - 1) * 60, edge) * (1 - lungs), rng.uniform(50, 70))
    gb = torch.sqrt((x - cx + ax * 0.35) ** 2 + (y - cy - ay * 0.2) ** 2 + (z - lung_z0 + 25) ** 2)
    _paint(vol, _smooth_step(gb - rng.uniform(12, 25), edge) * (z < lung_z0 - 10).float(), AIR + 50)

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
        side = rng.choice([-1, 1])
        c = np.array(
            [
                cx + side * lung_dx + rng.normal(0, lung_ax * 0.3),
                cy + rng.normal(0, lung_ay * 0.3),
                rng.uniform(lung_z0 + 30, lung_z1 - 20),
            ]
        )
        r = rng.uniform(3, 12)
        d = torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
        _paint(vol, _smooth_step(d, edge) * lungs, rng.uniform(20, 60))

    # Slight blur (scanner point spread) and noise only inside the body.
    k = torch.tensor([0.25, 0.5, 0.25])
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = 3
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 1
        vol = F.conv3d(F.pad(vol[None, None], pad, mode="replicate"), k.view(shape))[0, 0]
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    inside = _smooth_step((ell - 1) * scale, edge)
    vol = vol + noise_hu * torch.randn(vol.shape, generator=gen) * inside
    return vol.clamp(-1024, 3071).contiguous()


def phantom_affine(size: int, fov: float = 320.0):
    """RAS affine of a phantom: isotropic ``fov / size`` mm voxels, centred on the origin."""
    from custom.core.transforms import cube_affine

    return cube_affine(size, fov)


def _stored_size(path) -> tuple:
    """Voxel shape of a stored phantom, from its header only."""
    import nibabel as nib

    return tuple(int(n) for n in nib.load(str(path)).shape[:3])


def write_phantoms(out_dir, count: int = 8, size: int = 128, seed: int = 0, fov: float = 320.0, progress=True):
    """Write ``count`` phantoms (seeds ``seed`` .. ``seed + count - 1``) as ``phantom_<seed>.nii.gz`` in HU.

    Existing files are kept, so an interrupted run continues where it stopped. Returns the file paths.
    """
    from pathlib import Path

    import numpy as np
    from tqdm.auto import tqdm

    from custom.core.io import remove_stale_temporaries, save_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # partial files of a killed run
    paths = []
    for s in tqdm(range(int(seed), int(seed) + int(count)), desc="phantoms", unit="ct", disable=not progress):
        path = out / f"phantom_{s:05d}.nii.gz"
        if not path.is_file() or _stored_size(path) != (int(size),) * 3:  # a file of another size is redone
            vol = chest_phantom(s, size, fov)
            save_nifti(vol.numpy(), phantom_affine(size, fov), path, dtype=np.int16, description=f"phantom {s}")
        paths.append(path)
    return paths
