"""Denoiser of a super-resolution stage of the cascade that trains on sub-volumes and samples whole volumes in tiles.

At 128^3 and 256^3 a whole-volume training step does not fit a CPU budget (nor 16 GB of GPU memory at the design
widths), so stages 2 and 3 see random crops in training and the whole volume, tile by tile, at inference. For that,
everything a crop is conditioned on must mean the same in a crop and in the whole volume:

* position: each voxel carries its normalized physical coordinates in the cube (three input channels, in [-1, 1] at
  voxel centres, :func:`cube_coordinates`), and the ViT's position embedding is computed from the coordinates of
  its tokens rather than from their index in the crop (:func:`coordinate_embedding`);
* the X-rays: their features are lifted once onto a fixed grid over the whole cube (``lift_grid``) and sampled at each
  voxel's coordinates, so the condition of a crop is exactly the crop of the whole-volume condition.

The ViT attends within the crop (or tile) on its own token grid, one token per 4^3 voxels; the stage-1 denoiser's
resampling to a fixed token grid is what would make a crop and the whole volume differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from custom.xray2ct.network import CascadeDenoiser


def cube_coordinates(size: int, origin=(0, 0, 0), crop: int | None = None, device=None) -> torch.Tensor:
    """(3, c, c, c) normalized coordinates in [-1, 1] of the voxel centres of a ``crop``^3 block starting at voxel
    ``origin`` of a ``size``^3 grid over the cube (``align_corners=False`` convention; the whole grid by default)."""
    crop = int(crop or size)
    axes = [(torch.arange(crop, device=device, dtype=torch.float32) + o + 0.5) * (2.0 / size) - 1.0 for o in origin]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def coordinate_embedding(coords: torch.Tensor, dim: int, cells: int) -> torch.Tensor:
    """Sine-cosine embedding (B, N, dim) of token positions given as normalized coordinates (B, 3, n, n, n).

    Positions are measured in token cells over the whole cube (``cells`` per side), so a token has the same
    embedding whether it sits in a crop or in the whole volume.
    """
    per_axis = (dim // 6) * 2
    omega = 1.0 / (10000 ** (torch.arange(per_axis // 2, device=coords.device) / max(per_axis // 2, 1)))
    pos = (coords.flatten(2).transpose(1, 2) + 1.0) * (cells / 2.0) - 0.5  # (B, N, 3): 0 .. cells-1 at cell centres
    parts = []
    for axis in range(3):
        angle = pos[..., axis : axis + 1] * omega
        parts += [torch.sin(angle), torch.cos(angle)]
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1]))


class PatchDenoiser(CascadeDenoiser):
    """A super-resolution stage (2 or 3) of the cascade: predicts v on any crop of the ``volume_size``^3 cube.

    Args (beyond :class:`CascadeDenoiser`'s; ``use_prev`` is always on, ``token_grid`` unused):
        volume_size: D of the whole volume of this stage (128 or 256); crops may have any side divisible by 4.
        lift_grid: side of the grid over the whole cube onto which the X-ray features are lifted once.
    """

    def __init__(self, volume_size: int = 128, lift_grid: int = 32, **kwargs):
        kwargs.update(use_prev=True, extra_in_channels=3)
        kwargs.setdefault("token_grid", 4)
        super().__init__(volume_size=volume_size, **kwargs)
        self.lift_grid = int(lift_grid)
        self.pos = None  # the position embedding comes from the coordinates, per call

    def lift_xrays(self, xrays: torch.Tensor) -> torch.Tensor:
        """(B, lift_channels, G, G, G) X-ray features over the whole cube; constant over a sampling run, so the
        tiled sampler computes them once."""
        if xrays.ndim != 4 or xrays.shape[1] != len(self.encoders) or xrays.shape[-1] != xrays.shape[-2]:
            raise ValueError(f"xrays must be (B, {len(self.encoders)}, N, N), got {tuple(xrays.shape)}")
        feats = torch.stack([enc(xrays[:, i : i + 1]) for i, enc in enumerate(self.encoders)], dim=2)
        return self.lift(feats, self.lift_grid)

    @staticmethod
    def condition(coords: torch.Tensor, lifted: torch.Tensor) -> torch.Tensor:
        """The X-ray condition (B, C, c, c, c) on the voxels at ``coords``: the lifted features sampled trilinearly
        there, so that the condition of a crop is the crop of the whole volume's."""
        grid = coords.permute(0, 2, 3, 4, 1)[..., [2, 1, 0]].to(lifted.dtype)  # grid_sample wants (z, y, x) order
        return F.grid_sample(lifted, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(
        self,
        x_t: torch.Tensor,
        t01: torch.Tensor,
        xrays: torch.Tensor,
        prev: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        lifted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_t`` and ``prev`` (B, 1, c, c, c) on the voxels whose coordinates are ``coords`` (B, 3, c, c, c;
        default: the whole volume, c = D); ``lifted``: :meth:`lift_xrays` of ``xrays`` when already computed."""
        b, c = x_t.shape[0], x_t.shape[-1]
        if x_t.shape[-3:] != (c, c, c) or c % 4:
            raise ValueError(f"x_t must be (B, 1, c, c, c) with c divisible by 4, got {tuple(x_t.shape)}")
        if prev is None:
            raise ValueError("a super-resolution stage needs prev, the previous stage's output on the same voxels")
        if coords is None:
            if c != self.volume_size:
                raise ValueError(f"a {c}^3 crop of the {self.volume_size}^3 volume needs its coords")
            coords = cube_coordinates(c, device=x_t.device).expand(b, -1, -1, -1, -1)
        emb = self.time(t01)
        cond = self.condition(coords, self.lift_xrays(xrays) if lifted is None else lifted)
        parts = [x_t, cond.to(x_t.dtype), prev, coords.to(x_t.dtype)]
        if self.in_pad:
            parts.append(x_t.new_zeros((b, self.in_pad) + x_t.shape[2:]))
        h0 = torch.cat(parts, dim=1).contiguous(memory_format=self.memory_format)
        h0 = self._run(self.enc0, self.stem(h0), emb)
        h1 = self._run(self.enc1, self.down1(h0), emb)
        h2 = self._run(self.enc2, self.down2(h1), emb)
        token_coords = F.avg_pool3d(coords.float(), 4)  # the centre of each 4^3 block, one token per block
        pos = coordinate_embedding(token_coords, self.to_tokens.out_features, self.volume_size // 4)
        tokens = self.to_tokens(h2.flatten(2).transpose(1, 2)) + pos.to(h2.dtype) + emb[:, None, :]
        for blk in self.vit:
            tokens = self._run(blk, tokens)
        h = self.from_tokens(self.vit_norm(tokens)).transpose(1, 2).reshape(h2.shape)
        return self._decode(h, h0, h1, h2, emb)
