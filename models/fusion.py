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
windowed decoding equals whole-image decoding.

Optionally (``lowpass_sigma`` > 0) a fixed last step, the *low-frequency anchor*: the fused picture's
low frequencies are replaced by the continuous picture's, ``out + G_σ * (cont − out)`` with a Gaussian
``G_σ``. The continuous stream is coded for MSE, so below its cut-off it is the better estimate; the
network, trained for L1 + LPIPS-VGG, still leaves a slow colour and brightness drift there (val,
s21's fusion, σ 8: +0.16 dB at equal LPIPS-Alex; benchmarks/RESULTS.md, session 22). Texture lives
above the cut-off and is left alone."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ShuffledConv, UnshuffledConv
from .upsampler import PlainResBlock


@dataclass
class FusionConfig:
    channels: int = 32  # features at half resolution
    blocks: int = 4  # residual blocks at half resolution
    lowpass_sigma: float = 0.0  # the low-frequency anchor's Gaussian σ in full-resolution pixels (0: none)


class LowPass(nn.Module):
    """A Gaussian blur of σ ``sigma`` full-resolution pixels of an even-sided picture, computed at half
    resolution (2×2 mean, a blur of σ/2 truncated at ⌈5σ/4⌉ cells = 2.5 of its σ, bilinear ×2): a quarter of the
    pixels and half the taps of the full-resolution blur, which cost a Kodak decode 7 % (the result is
    the same to a fraction of a level: nothing that narrow passes a σ-8 Gaussian). The blur is two 1-D
    depthwise convolutions with zero padding, divided by the same blur of ones: near an image's (or a
    window's) edge it is the weighted mean of the cells that exist, not a fall-off toward zero. Fixed
    weights (buffers made from σ, not saved; one per channel count so the exported kernels have a
    static shape), so a checkpoint carries only σ."""

    def __init__(self, sigma: float, channels: int = 3):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"a low-pass needs σ > 0, not {sigma}")
        # half-resolution cells each side: 2.5 σ leaves 1 % of the weight out and keeps σ 8 inside a margin
        # of 3 tokens with the network's 23 pixels (3 σ: 4 tokens, 8 % more fusion work per window)
        self.taps = math.ceil(1.25 * sigma)
        x = torch.arange(-self.taps, self.taps + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * (sigma / 2) ** 2))
        row = (k / k.sum()).view(1, 1, 1, -1)
        self.register_buffer("row", row.repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("row_ones", row, persistent=False)

    @property
    def radius(self) -> int:
        """Full-resolution pixels an output pixel reads each side: the blur's cells, plus one cell for
        the 2×2 mean and one for the bilinear step."""
        return 2 * (self.taps + 2)

    def _blur(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        r, c = self.taps, row.shape[0]
        x = F.conv2d(x, row.to(x.dtype), padding=(0, r), groups=c)
        return F.conv2d(x, row.to(x.dtype).transpose(2, 3), padding=(r, 0), groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 and contiguous even under bf16 autocast: PyTorch's CPU depthwise convolution in bf16 on a
        # channels-last batch (what training hands the fusion) took minutes per step instead of 0.3 s
        with torch.autocast(x.device.type, enabled=False):
            small = F.avg_pool2d(x.float().contiguous(), 2)
            small = self._blur(small, self.row) / self._blur(torch.ones_like(small[:, :1]), self.row_ones)
            return F.interpolate(small, scale_factor=2.0, mode="bilinear", align_corners=False)


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
        self.lowpass = LowPass(cfg.lowpass_sigma) if cfg.lowpass_sigma else None

    @classmethod
    def from_state(cls, cfg: FusionConfig, state: Mapping[str, torch.Tensor], blocks: int | None = None,
                   lowpass_sigma: float | None = None) -> Fusion:
        """A fusion with ``state``'s weights, or the first ``blocks`` residual blocks of it: a shallower
        fusion (fewer multiply-adds per pixel) started from a trained one, which then needs far fewer
        steps than one started from zero (each block is a residual, so dropping the last ones leaves a
        nearby function). ``lowpass_sigma`` (None: ``cfg``'s) sets the low-frequency anchor, which
        has no weights."""
        n = cfg.blocks if blocks is None else blocks
        if not 1 <= n <= cfg.blocks:
            raise ValueError(f"a fusion of {cfg.blocks} blocks can start one of 1 … {cfg.blocks} blocks, not {n}")
        sigma = cfg.lowpass_sigma if lowpass_sigma is None else lowpass_sigma
        net = cls(replace(cfg, blocks=n, lowpass_sigma=sigma))  # LowPass refuses a negative σ
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in own})  # strict: every own weight given
        return net

    def receptive_radius(self) -> int:
        """Full-resolution pixels an output pixel sees each side: 2 for the stride-2 4×4 convolution,
        2 per half-resolution 3×3 convolution (body and up), 1 for the pixel shuffle's cell, 1 per
        full-resolution 3×3 convolution, and the low-pass's radius (it reads the network's output)."""
        anchor = self.lowpass.radius if self.lowpass is not None else 0
        return 2 + 2 * (2 * self.cfg.blocks + 1) + 1 + 2 + anchor

    def forward(self, pixels: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        both = torch.cat([pixels, cont], dim=1)
        h = self.up(self.body(F.relu(self.down(both))))
        out = pixels + self.out(torch.cat([h, both], dim=1))
        return out if self.lowpass is None else out + self.lowpass(cont - out)


class HalfResolutionFusion(nn.Module):
    """A ``Fusion``'s function (to float rounding) computed at half resolution from end to end: what export
    writes as the fusion graph. The two pictures are split into their 2×2 phases once (pixel unshuffle);
    the strided first convolution reads those phases (``UnshuffledConv``), and the full-resolution output
    convolutions, whose input is the up-sampled features next to the pictures, become convolutions of the
    phases before the last shuffle (``ShuffledConv``; the features are never shuffled up, ReLU commutes
    with a shuffle). Why: at full resolution those two convolutions, the shuffle and the concatenation
    before them were ≈ 45 % of the fusion's time, in fp32 (int8 there held full-size copies of the
    pictures); at half resolution they are ordinary int8 convolutions on deeper, 4× fewer positions, for
    4× their multiply-adds (27 k → 39 k per pixel for the whole fusion, counted on the exported graph)."""

    def __init__(self, fusion: Fusion):
        super().__init__()
        f = fusion
        self.unshuffle, self.shuffle = nn.PixelUnshuffle(2), nn.PixelShuffle(2)
        self.down = UnshuffledConv(f.down).conv
        self.body = f.body
        self.up = f.up[0]  # the convolution before the up-sampling's shuffle
        self.out0 = ShuffledConv(f.out[0], 2).conv
        self.out2 = ShuffledConv(f.out[2], 2).conv
        self.lowpass = f.lowpass

    def forward(self, pixels: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        both = self.unshuffle(torch.cat([pixels, cont], dim=1))  # (B, 6·4, H/2, W/2): channel c·4 + phase
        h = F.relu(self.up(self.body(F.relu(self.down(both)))))  # the features' 16 channels × 4 phases
        out = pixels + self.shuffle(self.out2(F.relu(self.out0(torch.cat([h, both], dim=1)))))
        return out if self.lowpass is None else out + self.lowpass(cont - out)
