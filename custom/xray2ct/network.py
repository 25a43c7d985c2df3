"""Conditional denoiser of one cascade stage: X-ray encoders, depth lifting, hybrid CNN + ViT core.

Inputs of ``forward``: the noisy volume ``x_t`` (B, 1, D, D, D) in window units, the normalized timestep ``t01``
(B,) = t / T in [0, 1] (the same input in training and sampling), the two X-rays ``xrays`` (B, 2, N, N) (frontal,
lateral; network-input units, see :func:`custom.core.xray.line_integral_to_input`) and, for stages 2 and 3,
``prev`` (B, 1, D, D, D), the previous stage's output upsampled to D. Output: the predicted velocity ``v``
(B, 1, D, D, D).

* Each view has its own 2D encoder. Its features are lifted into 3D with the adjoint of the DRR projector of the
  same geometry (:meth:`custom.core.physics.DRRProjector.backproject`), i.e. spread along the real, diverging X-ray
  paths and averaged, rather than repeated along an axis that ignores the cone-beam magnification.
* Both lifted views are fused by a 1x1x1 convolution into ``lift_channels`` (16) channels, upsampled to D
  and concatenated with ``x_t`` (and ``prev``); squeezing them into one channel would discard most of the
  X-ray information.
* A 3D CNN encoder goes down to D/4, the features are resampled to a ``token_grid``^3 token grid (16, 24, 32 for
  the three stages: one grid of 16 for all would shrink stage 3 sixteenfold before attention), pass through ViT
  blocks (MONAI ``TransformerBlock``) with a fixed 3D position embedding and the time embedding, come back to D/4
  and are decoded with skip connections.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from custom.core.networks.blocks import FiLMResBlock, TimestepEmbedding, sincos_position_embedding_3d
from custom.core.networks.lifting import DepthLifting, XRayEncoder
from custom.core.physics import ProjectionGeometry


class CascadeDenoiser(nn.Module):
    """One stage of the X-ray -> CT diffusion cascade (predicts v).

    Args:
        volume_size: D, side of the volume (divisible by 4).
        token_grid: side of the ViT token grid (16 / 24 / 32 for 64 / 128 / 256).
        use_prev: stages 2 and 3 condition on the previous stage's upsampled output.
        channels: CNN channels at D, D/2, D/4.
        xray_channels: channels of each X-ray encoder's output.
        lift_channels: channels of the lifted X-ray volume (16).
        hidden_size, vit_depth, num_heads: the ViT.
        geometry, views, cube_mm: the X-ray geometry used by the depth lifting.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        extra_in_channels: further input channels a subclass concatenates (e.g. voxel coordinates).
        channels_last: keep 3D convolution weights and activations in NDHWC layout. On CPU, oneDNN's backward pass
            of 3D convolutions with few channels is 5-18x faster in this layout (measured: 8->8 channels at 4 x 64^3,
            4.8 s NCDHW vs 0.47 s NDHWC); it is also the layout cuDNN prefers under AMP.
    """

    def __init__(
        self,
        volume_size: int = 64,
        token_grid: int = 16,
        use_prev: bool = False,
        channels: Sequence[int] = (16, 32, 64),
        xray_channels: int = 32,
        lift_channels: int = 16,
        hidden_size: int = 192,
        vit_depth: int = 4,
        num_heads: int = 6,
        geometry: str | ProjectionGeometry = "x2ctgan",
        views: Sequence[str] = ("frontal", "lateral"),
        cube_mm: float = 320.0,
        gradient_checkpointing: bool = False,
        channels_last: bool = True,
        extra_in_channels: int = 0,
    ):
        super().__init__()
        if volume_size % 4:
            raise ValueError(f"volume_size must be divisible by 4, got {volume_size}")
        c0, c1, c2 = channels
        self.volume_size, self.token_grid, self.use_prev = int(volume_size), int(token_grid), bool(use_prev)
        self.gradient_checkpointing = gradient_checkpointing
        self.time = TimestepEmbedding(hidden_size)
        self.encoders = nn.ModuleList([XRayEncoder(xray_channels) for _ in views])
        self.lift = DepthLifting(xray_channels, lift_channels, geometry, views, cube_mm)
        in_ch = 1 + lift_channels + (1 if use_prev else 0) + int(extra_in_channels)
        # cuDNN falls back to a slow fp32 "indexed" kernel for the input gradient when the channel count is not a
        # multiple of 8 (17 here: it took 80% of a training step on an H100); zero channels make it 24.
        self.in_pad = -in_ch % 8
        self.stem = nn.Conv3d(in_ch + self.in_pad, c0, 3, padding=1)
        self.enc0 = FiLMResBlock(3, c0, c0, hidden_size)
        self.down1 = nn.Conv3d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = FiLMResBlock(3, c1, c1, hidden_size)
        self.down2 = nn.Conv3d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = FiLMResBlock(3, c2, c2, hidden_size)
        self.to_tokens = nn.Linear(c2, hidden_size)
        self.register_buffer("pos", sincos_position_embedding_3d(self.token_grid, hidden_size), persistent=False)
        self.vit = nn.ModuleList(
            [
                TransformerBlock(hidden_size, 4 * hidden_size, num_heads, qkv_bias=True, use_flash_attention=True)
                for _ in range(vit_depth)
            ]
        )
        for blk in self.vit:
            # MONAI 1.6 builds a cross-attention LayerNorm even without cross-attention; its unused parameters would
            # make DDP fail (or need find_unused_parameters, a graph walk per step).
            blk.norm_cross_attn = nn.Identity()
        self.vit_norm = nn.LayerNorm(hidden_size)
        self.from_tokens = nn.Linear(hidden_size, c2)
        self.mid = FiLMResBlock(3, c2, c2, hidden_size)
        self.dec1 = FiLMResBlock(3, c2 + c1, c1, hidden_size)
        self.dec0 = FiLMResBlock(3, c1 + c0, c0, hidden_size)
        self.out = nn.Sequential(nn.GroupNorm(8 if c0 % 8 == 0 else 1, c0), nn.SiLU(), nn.Conv3d(c0, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        for p in self.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=self.memory_format)

    def _run(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self, x_t: torch.Tensor, t01: torch.Tensor, xrays: torch.Tensor, prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        d = x_t.shape[-1]
        if x_t.shape[-3:] != (d, d, d) or d % 4:
            raise ValueError(f"x_t must be (B, 1, D, D, D) with D divisible by 4, got {tuple(x_t.shape)}")
        if xrays.ndim != 4 or xrays.shape[1] != len(self.encoders) or xrays.shape[-1] != xrays.shape[-2]:
            raise ValueError(f"xrays must be (B, {len(self.encoders)}, N, N), got {tuple(xrays.shape)}")
        if self.use_prev and prev is None:
            raise ValueError("this stage conditions on the previous stage: pass prev (B, 1, D, D, D)")
        emb = self.time(t01)
        feats = torch.stack([enc(xrays[:, i : i + 1]) for i, enc in enumerate(self.encoders)], dim=2)
        lifted = self.lift(feats, d // 2)
        lifted = F.interpolate(lifted, size=(d, d, d), mode="trilinear", align_corners=False)
        parts = [x_t, lifted] + ([prev] if self.use_prev else [])
        if self.in_pad:
            parts.append(x_t.new_zeros((x_t.shape[0], self.in_pad) + x_t.shape[2:]))
        h0 = torch.cat(parts, dim=1).contiguous(memory_format=self.memory_format)
        h0 = self._run(self.enc0, self.stem(h0), emb)
        h1 = self._run(self.enc1, self.down1(h0), emb)
        h2 = self._run(self.enc2, self.down2(h1), emb)
        h = h2
        g = self.token_grid
        if h.shape[-1] != g:
            h = F.interpolate(h, size=(g, g, g), mode="trilinear", align_corners=False)
        tokens = self.to_tokens(h.flatten(2).transpose(1, 2)) + self.pos + emb[:, None, :]
        for blk in self.vit:
            tokens = self._run(blk, tokens)
        h = self.from_tokens(self.vit_norm(tokens)).transpose(1, 2).reshape(h.shape[0], -1, g, g, g)
        if h.shape[-1] != h2.shape[-1]:
            h = F.interpolate(h, size=h2.shape[-3:], mode="trilinear", align_corners=False)
        return self._decode(h, h0, h1, h2, emb)

    def _decode(self, h, h0, h1, h2, emb) -> torch.Tensor:
        """The ViT's output ``h`` (at D/4) back to v at D through the skip connections of the encoder."""
        h = self._run(self.mid, h + h2, emb)
        h = F.interpolate(h, size=h1.shape[-3:], mode="trilinear", align_corners=False)
        h = self._run(self.dec1, torch.cat([h, h1], dim=1), emb)
        h = F.interpolate(h, size=h0.shape[-3:], mode="trilinear", align_corners=False)
        h = self._run(self.dec0, torch.cat([h, h0], dim=1), emb)
        return self.out(h).contiguous()
