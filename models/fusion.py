"""Fusion: the last step of a hybrid decode, merging its two pictures into one.

A hybrid stream gives the decoder two full-resolution pictures at no extra bits: the pixel decoder's
(VQ decoder + correction; sharp, perceptually good, but its colours and low frequencies drift: it
invents texture) and the continuous stream's own reconstruction (the learned ×4 up-sampling; blurry,
but 0.5–1.7 dB closer to the original on every val image). A fixed low/high-frequency swap between
the two already trades PSNR against LPIPS (val: +0.41 dB for +0.007 LPIPS-Alex); this network
learns, per position, how much of each to keep.

It sees both pictures at full resolution, works at half resolution (cheap: ≈ 20 k MAC per output
pixel, ≈ 7 % of the pixel decoder's) and predicts a residual over the pixel decoder's picture. Its
last convolution starts at zero, so an untrained fusion *is* today's hybrid output. No
normalisation: every output pixel depends only on its receptive field (``receptive_radius``), so
windowed decoding equals whole-image decoding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .upsampler import PlainResBlock


@dataclass
class FusionConfig:
    channels: int = 32  # features at half resolution
    blocks: int = 4  # residual blocks at half resolution


class Fusion(nn.Module):
    """(pixel decoder's RGB, continuous RGB), both (B, 3, H, W) in [−1, 1] with H and W even →
    fused RGB in [−1, 1] (unclamped)."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.down = nn.Conv2d(6, c, 4, stride=2, padding=1)
        self.body = nn.Sequential(*(PlainResBlock(c) for _ in range(cfg.blocks)))
        self.up = nn.Sequential(nn.Conv2d(c, 4 * (c // 2), 3, padding=1), nn.PixelShuffle(2), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(c // 2 + 6, c // 2, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c // 2, 3, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @classmethod
    def from_state(cls, cfg: FusionConfig, state: Mapping[str, torch.Tensor], blocks: int | None = None) -> Fusion:
        """A fusion with ``state``'s weights, or the first ``blocks`` residual blocks of it: a shallower
        fusion (fewer multiply-adds per pixel) started from a trained one, which then needs far fewer
        steps than one started from zero (each block is a residual, so dropping the last ones leaves a
        nearby function)."""
        n = cfg.blocks if blocks is None else blocks
        if not 1 <= n <= cfg.blocks:
            raise ValueError(f"a fusion of {cfg.blocks} blocks can start one of 1 … {cfg.blocks} blocks, not {n}")
        net = cls(replace(cfg, blocks=n))
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in own})  # strict: every own weight given
        return net

    def receptive_radius(self) -> int:
        """Full-resolution pixels an output pixel sees each side: 2 for the stride-2 4×4 convolution,
        2 per half-resolution 3×3 convolution (body and up), 1 for the pixel shuffle's cell, 1 per
        full-resolution 3×3 convolution."""
        return 2 + 2 * (2 * self.cfg.blocks + 1) + 1 + 2

    def forward(self, pixels: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        both = torch.cat([pixels, cont], dim=1)
        h = self.up(self.body(F.relu(self.down(both))))
        return pixels + self.out(torch.cat([h, both], dim=1))
