"""RefinerUNet: a 2D U-Net that refines a coarse segmentation given its probability map and the image.

Inputs (B, 6, H, W) in the order of :data:`custom.mask_refiner.data.CHANNELS`: softmax background and foreground, the
image, the entropy of the probability map, the signed distance to the coarse mask and the normalized row. Output:
(B, 1, H, W) logits of the refined mask.

* The image path encodes all six channels; a second, light encoder sees only the probability-derived channels.
  At the bottleneck the image features attend to the probability features (MONAI ``CrossAttentionBlock``).
* The decoder gates each skip connection with an attention gate (MONAI's ``AttentionUnet`` gate).
* The network predicts a correction to the coarse logits, ``logit(p_coarse) + correction``, with the correction
  head initialised to zero: an untrained refiner returns the coarse mask, so training starts from "do no harm".
* Any height and width work: the input is padded to a multiple of 8 internally and the output cropped back.
* ``min_change`` (eval mode only): per image, the refiner abstains and returns the coarse logits when its mask would
  differ from the coarse mask by less than this (1 - Dice between the two masks); see
  :mod:`custom.mask_refiner.safeguard`. Training ignores it: an abstained image would have no gradient, and the
  zero-initialised correction would abstain on every image.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import CrossAttentionBlock
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from custom.mask_refiner.safeguard import abstain_small_changes, check_min_change

PROB_CHANNELS = (0, 1, 3, 4)  # softmax bg, softmax fg, entropy, distance


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class RefinerUNet(nn.Module):
    """Coarse-mask refiner.

    Args:
        in_channels: input channels (6).
        channels: widths of the four levels.
        prob_channels: indices of the probability-derived input channels fed to the second encoder.
        num_heads: heads of the bottleneck cross-attention.
        fg_channel: index of the coarse foreground probability (the residual is added to its logit).
        min_change: in eval mode, the smallest change of the mask (1 - Dice between coarse and refined masks, in
            [0, 1]) that the refiner keeps; below it the image's output is the coarse logits. 0: always refine.
    """

    def __init__(
        self,
        in_channels: int = 6,
        channels: Sequence[int] = (16, 32, 64, 128),
        prob_channels: Sequence[int] = PROB_CHANNELS,
        num_heads: int = 4,
        fg_channel: int = 1,
        min_change: float = 0.0,
    ):
        super().__init__()
        self.min_change = check_min_change(min_change)
        c = list(channels)
        self.prob_channels = list(prob_channels)
        self.fg_channel = fg_channel
        self.enc = nn.ModuleList([_block(in_channels, c[0])] + [_block(c[i - 1], c[i]) for i in range(1, len(c))])
        self.prob_enc = nn.Sequential(
            nn.Conv2d(len(self.prob_channels), c[0], 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c[0], c[-1], 3, stride=2 ** (len(c) - 1), padding=1),
            nn.LeakyReLU(0.1),
        )
        self.norm_q, self.norm_kv = nn.LayerNorm(c[-1]), nn.LayerNorm(c[-1])
        self.cross = CrossAttentionBlock(c[-1], num_heads, qkv_bias=True, use_flash_attention=True)
        self.gates = nn.ModuleList([AttentionBlock(2, max(c[i] // 2, 4), c[i + 1], c[i]) for i in range(len(c) - 1)])
        self.dec = nn.ModuleList([_block(c[i + 1] + c[i], c[i]) for i in range(len(c) - 1)])
        self.head = nn.Conv2d(c[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.levels = len(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        pad = (0, -w % m, 0, -h % m)
        xp = F.pad(x, pad, mode="replicate")
        skips, f = [], xp
        for i, enc in enumerate(self.enc):
            f = enc(f if i == 0 else F.max_pool2d(f, 2))
            skips.append(f)
        b, ch, hb, wb = f.shape
        p = self.prob_enc(xp[:, self.prob_channels])[..., :hb, :wb]
        q = f.flatten(2).transpose(1, 2)
        kv = p.flatten(2).transpose(1, 2)
        f = f + self.cross(self.norm_q(q), self.norm_kv(kv)).transpose(1, 2).reshape(b, ch, hb, wb)
        for i in reversed(range(self.levels - 1)):
            up = F.interpolate(f, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            f = self.dec[i](torch.cat([up, self.gates[i](up, skips[i])], dim=1))
        correction = self.head(f)[..., :h, :w]
        prob = x[:, self.fg_channel : self.fg_channel + 1]
        coarse = torch.logit(prob.clamp(1e-4, 1 - 1e-4))
        refined = coarse + correction
        if self.training or self.min_change <= 0:
            return refined
        return abstain_small_changes(refined, coarse, prob, self.min_change)
