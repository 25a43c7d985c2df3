"""Small building blocks shared by the networks: timestep embedding and time-conditioned residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimestepEmbedding(nn.Module):
    """Fourier features of a normalized timestep ``t / T`` in [0, 1] (training and sampling alike), then an MLP.

    Frequencies span 1..1000 cycles over [0, 1], so adjacent training timesteps stay distinguishable even though
    the input is normalized. Inputs outside [0, 1] are rejected: they mean a caller passed raw timesteps.

    Args:
        dim: output size.
        num_frequencies: Fourier frequencies (output of the sinusoids: ``2 * num_frequencies``).
    """

    def __init__(self, dim: int, num_frequencies: int = 64):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), num_frequencies)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t01: torch.Tensor) -> torch.Tensor:
        if t01.device.type == "cpu":
            if t01.numel() and (float(t01.min()) < 0 or float(t01.max()) > 1):
                raise ValueError(
                    f"timesteps must be normalized to [0, 1] (t / num_train_timesteps), got [{float(t01.min())}, "
                    f"{float(t01.max())}]"
                )
        else:  # no host sync on accelerators: the check fails asynchronously
            torch._assert_async(((t01 >= 0) & (t01 <= 1)).all(), "timesteps must be normalized to [0, 1]")
        x = t01.float().reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([torch.sin(x), torch.cos(x)], dim=-1))


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class FiLMResBlock(nn.Module):
    """Two 3x3(x3) convolutions with GroupNorm and SiLU; the time embedding scales and shifts the second norm.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels.
        emb_dim: size of the time embedding (0 for none).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_dim: int = 0):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None and emb is not None:
            scale, shift = self.film(emb).chunk(2, dim=-1)
            shape = (h.shape[0], h.shape[1]) + (1,) * (h.ndim - 2)
            h = h * (1 + scale.view(shape)) + shift.view(shape)
        h = self.conv2(self.act(h))
        return h + self.skip(x)


def sincos_position_embedding_3d(grid: int, dim: int) -> torch.Tensor:
    """Fixed (grid^3, dim) sine-cosine position embedding, one third of the channels per axis.

    Not MONAI's ``build_sincos_position_embedding``: that one needs ``dim`` divisible by 6 and orders the axes
    differently, and the released cascade weights were trained with this layout (it is not stored in them).
    """
    per_axis = (dim // 6) * 2
    coords = torch.arange(grid, dtype=torch.float32)
    omega = 1.0 / (10000 ** (torch.arange(per_axis // 2, dtype=torch.float32) / max(per_axis // 2, 1)))
    parts = []
    zz, yy, xx = torch.meshgrid(coords, coords, coords, indexing="ij")
    for c in (zz, yy, xx):
        out = c.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(out), torch.cos(out)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb


class SEResBlock(nn.Module):
    """Residual block with instance normalization and channel attention, for the CT refiners.

    MONAI's ``UnetResBlock`` (conv-IN-LeakyReLU-conv-IN plus the skip, then LeakyReLU) followed by MONAI's
    ``ChannelSELayer`` (squeeze-and-excitation), so each scale re-weights its channels from global context.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels.
        se_reduction: squeeze ratio of the channel attention.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, se_reduction: int = 4):
        super().__init__()
        from monai.networks.blocks import ChannelSELayer, UnetResBlock

        self.res = UnetResBlock(spatial_dims, in_channels, out_channels, 3, 1, norm_name="instance")
        self.se = ChannelSELayer(spatial_dims, out_channels, r=max(1, min(int(se_reduction), out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.res(x))
