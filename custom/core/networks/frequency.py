"""Frequency-domain attention: re-weight the spectrum of 3D feature maps, amplitude only.

It lets the CT detail refiner learn to emphasize high frequencies (the detail a coarse CT lacks); the phase, which
carries where structures are, is kept.

MONAI has channel and spatial attention but nothing that acts on the Fourier spectrum, hence this module.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def radial_frequency(shape, device=None) -> torch.Tensor:
    """|f| in cycles per voxel (0 to sqrt(3)/2) on the ``rfftn`` grid of a (D, H, W) volume: (D, H, W // 2 + 1)."""
    d, h, w = (int(s) for s in shape)
    fd = torch.fft.fftfreq(d, device=device)
    fh = torch.fft.fftfreq(h, device=device)
    fw = torch.fft.rfftfreq(w, device=device)
    return (fd[:, None, None] ** 2 + fh[None, :, None] ** 2 + fw[None, None, :] ** 2).sqrt()


class FrequencyAttention(nn.Module):
    """Learned, input-dependent emphasis of spatial frequencies, phase preserved.

    For (B, C, D, H, W) features ``x``: ``X = rfftn(x)``; each channel's spectrum is multiplied by a real, positive
    gain ``g(b, c, |f|) = exp(w[c, |f|] + a(b, c, |f|))``, piecewise linear in the radial frequency |f| over
    ``num_bins`` bins: ``w`` is a learned per-channel profile (how much each channel wants high frequencies) and
    ``a`` comes from a small MLP on the per-bin mean log-amplitude of the sample's own spectrum (the attention
    part: the emphasis adapts to how much detail the features already carry). The output is ``irfftn`` of the
    re-weighted spectrum. A real positive gain changes amplitudes only, so every Fourier coefficient keeps its
    phase: edges stay where they are. Both ``w`` and the MLP's last layer start at zero, so the untrained module
    is the identity. The FFT runs in float32, also under AMP.

    Args:
        channels: C.
        num_bins: radial frequency bins of the gain profile.
        hidden: width of the MLP (default ``2 * num_bins``).
        max_log_gain: bound of the log-gain (tanh-limited) so the spectrum cannot blow up.
    """

    def __init__(self, channels: int, num_bins: int = 8, hidden: int | None = None, max_log_gain: float = 3.0):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.channels, self.num_bins, self.max_log_gain = int(channels), int(num_bins), float(max_log_gain)
        self.profile = nn.Parameter(torch.zeros(self.channels, self.num_bins))
        hidden = hidden or 2 * self.num_bins
        self.mlp = nn.Sequential(nn.Linear(self.num_bins, hidden), nn.SiLU(), nn.Linear(hidden, self.num_bins))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self._grids: dict = {}

    def _grid(self, shape, device):
        key = (tuple(shape), str(device))
        if key not in self._grids:
            pos = radial_frequency(shape, device) / (math.sqrt(3.0) / 2.0) * (self.num_bins - 1)
            lo = pos.floor().clamp(max=self.num_bins - 2).long()
            frac = pos - lo
            nearest = pos.round().long().reshape(-1)
            counts = torch.bincount(nearest, minlength=self.num_bins).clamp(min=1).float()
            self._grids[key] = (lo.reshape(-1), frac.reshape(-1), nearest, counts)
        return self._grids[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, D, H, W), got shape {tuple(x.shape)}")
        b, c = x.shape[:2]
        spatial = x.shape[-3:]
        spec = torch.fft.rfftn(x.float(), dim=(-3, -2, -1), norm="ortho")
        lo, frac, nearest, counts = self._grid(spatial, x.device)
        flat = spec.reshape(b, c, -1)
        log_amp = torch.log1p(flat.abs())
        pooled = torch.zeros(b, c, self.num_bins, device=x.device).index_add_(2, nearest, log_amp) / counts
        log_gain = self.profile[None] + self.mlp(pooled)  # (B, C, bins)
        log_gain = self.max_log_gain * torch.tanh(log_gain / self.max_log_gain)
        g = log_gain[..., lo] * (1 - frac) + log_gain[..., lo + 1] * frac  # (B, C, F), linear between bins
        out = torch.fft.irfftn((flat * torch.exp(g)).reshape(spec.shape), s=spatial, dim=(-3, -2, -1), norm="ortho")
        return out.to(x.dtype)
