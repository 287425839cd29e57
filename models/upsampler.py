"""Learned ×4 up-sampling of the continuous stream (the continuous-only reconstruction).

The continuous codec codes the 4×-downsampled image; its synthesis tail turns the guidance ``g``
(÷16 of full resolution) into that low-res image, which the runtime used to enlarge with bicubic
interpolation. Bicubic cannot restore anything the low-res image lost, but ``g`` has 96 channels
per 16×16 pixels where the low-res image has 3 per 4×4: the network below reads the tail's ÷8
features next to the low-res image and predicts the full-resolution residual over bicubic.

Its last convolution starts at zero, so an untrained upsampler *is* the bicubic reconstruction and
training can only move away from it where that helps (MSE: the continuous-only stream is the
PSNR baseline of the method). No normalisation layers: every output pixel depends only on its
receptive field, so windowed decoding equals whole-image decoding (see tests/test_seamless.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PlainResBlock(nn.Module):
    """conv → ReLU → conv, plus the input (EDSR: no normalisation, which costs super-resolution accuracy)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def cubic_taps(scale: int, a: float = -0.75) -> torch.Tensor:
    """(scale, 5): the weights of input pixels −2 … +2 around each output phase of a ×``scale`` bicubic
    up-sampling as PyTorch computes it (``F.interpolate(mode="bicubic", align_corners=False)``: Keys'
    kernel with a = −0.75; output pixel o of phase p sits at input coordinate i + (p + ½)/scale − ½)."""
    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0

    return torch.tensor([[kernel((p + 0.5) / scale - 0.5 - k) for k in range(-2, 3)] for p in range(scale)])


class BicubicUp(nn.Module):
    """×``scale`` bicubic up-sampling, exactly ``F.interpolate(mode="bicubic", align_corners=False)`` (edges
    clamped), written as an edge pad, one fixed depthwise 5×5 convolution into scale² phases per channel and
    a pixel shuffle. Why: onnxruntime's cubic ``Resize`` took 40 % of the continuous picture's decoding
    time; these three nodes are ordinary fast kernels. The kernel is not a parameter and not saved."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.channels, self.scale = channels, scale
        taps = cubic_taps(scale)
        phases = (taps[:, None, :, None] * taps[None, :, None, :]).reshape(scale * scale, 5, 5)  # (py, px)
        self.register_buffer("kernel", phases.repeat(channels, 1, 1)[:, None], persistent=False)

    # eager under ``hf-train --compile``: torch 2.13's inductor fails on the replicate pad's backward
    # ("expected … stride", replication_pad2d_backward); the export's tracing is unaffected
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return F.pixel_shuffle(F.conv2d(x, self.kernel, groups=self.channels), self.scale)


class ContUpsampler(nn.Module):
    """Guidance (÷16) → full-resolution RGB in [0, 1] (unclamped): bicubic of the codec's own low-res
    reconstruction plus a learned residual. ``head``/``to_low`` *are* the codec's synthesis tail
    (``tail``: deconvolution, inverse GDN, deconvolution; shared modules, so the exported graph and the
    bundle hold those weights once), fine-tuned with the rest. ``scale`` is the codec's down-scaling
    factor (a power of two): one ×2 pixel-shuffle stage each, channels halving from ``channels``."""

    def __init__(self, tail: nn.Sequential, scale: int, channels: int = 64, blocks: int = 4):
        super().__init__()
        self.scale = scale
        self.bicubic = BicubicUp(3, scale)
        n, c = tail[0].in_channels, channels
        self.head = tail[:2]  # ÷16 → ÷8
        self.to_low = tail[2]  # ÷8 → ÷4: the low-res image
        self.features = nn.ConvTranspose2d(n, c, 5, 2, 2, 1)  # ÷8 → ÷4: what the low-res image dropped
        self.body = nn.Sequential(nn.Conv2d(c + 3, c, 3, padding=1), *(PlainResBlock(c) for _ in range(blocks)))
        up: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            up += [nn.Conv2d(c, 4 * (c // 2), 3, padding=1), nn.PixelShuffle(2), nn.ReLU()]
            c //= 2
        self.up = nn.Sequential(*up, nn.Conv2d(c, 3, 3, padding=1))
        nn.init.zeros_(self.up[-1].weight)
        nn.init.zeros_(self.up[-1].bias)

    def receptive_radius(self) -> float:
        """How far (in guidance cells, ÷16) an output pixel sees: ±1.5 input pixels per 5×5 stride-2
        deconvolution (÷16 → ÷8, ÷8 → ÷4), ±1 pixel per 3×3 convolution at its resolution (the body
        at ÷4, then one per ×2 stage and the last at full resolution). Windows need this margin."""
        radius, cell = 1.5 + 1.5 / 2, 4.0  # the two deconvolutions; then ÷4 pixels per cell
        radius += (1 + 2 * (len(self.body) - 1)) / cell
        for _ in range(int(math.log2(self.scale))):
            radius += 1 / cell
            cell *= 2
        return radius + 1 / cell

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        h = self.head(g)
        low = self.to_low(h)
        base = self.bicubic(low)
        return base + self.up(self.body(torch.cat([self.features(h), low], dim=1)))
