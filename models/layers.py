"""Small building blocks shared by the autoencoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("group", "channel")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=8 if channels % 8 == 0 else 1, num_channels=channels, eps=1e-6)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each position, nothing else.

    Why: GroupNorm takes its statistics over the whole spatial map, so one token map decoded as a
    tile, as quadrants or as a whole image gives different colours (tile seams, colour steps, pink
    padded edge tiles). A position-wise norm makes every output pixel depend only on its receptive
    field: decoding in windows with a margin ≥ that field equals decoding the whole image.
    Parameters have GroupNorm's names and shapes, so a GroupNorm checkpoint loads as a starting point."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a layer norm over the last axis of the channels-last view: one LayerNormalization node in ONNX
        # (onnxruntime's fused kernel), where the written-out mean/variance took nine element-wise and
        # reduction nodes, strided over the channels
        last = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return last.permute(0, 3, 1, 2)


def norm_layer(channels: int, kind: str = "group") -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMS)}")
    return group_norm(channels) if kind == "group" else ChannelNorm(channels)


class ResBlock(nn.Module):
    """VQGAN-style residual block (norm → SiLU → conv, twice)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group"):
        super().__init__()
        self.norm1 = norm_layer(c_in, norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = norm_layer(c_out, norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then conv: avoids the checkerboard artefacts of transposed convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SubpixelOut(nn.Module):
    """Half-resolution features → full-resolution RGB: norm → SiLU → 3×3 conv → SiLU → 3×3 conv to 2×2×3
    values per position → pixel shuffle (ESPCN, Shi et al. 2016).

    Why: the VQ decoder's last stage (nearest ×2, a residual block, norm and output convolution, all at full
    resolution) was ≈ 67 k of the pixel decoder's 152 k multiply-adds per pixel and most of its memory
    traffic: every norm, activation and (de)quantisation there passes over the largest tensors of a decode.
    This draws the same receptive field (two half-resolution 3×3 convolutions = 4 full-resolution pixels
    each side, as before) from the half-resolution features directly. Position-wise, like ChannelNorm."""

    def __init__(self, c_in: int, hidden: int, norm: str = "channel", scale: int = 2):
        super().__init__()
        self.norm = norm_layer(c_in, norm)
        self.conv1 = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv2(F.silu(self.conv1(F.silu(self.norm(x))))))


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé et al.); ``inverse=True`` gives IGDN.

    Parameters are stored as square roots so that beta, gamma stay non-negative without
    a custom reparametrisation op (exports to plain ONNX ops)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        self.gamma_sqrt = nn.Parameter(torch.sqrt(0.1 * torch.eye(channels) + 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_sqrt.square() + self.beta_min
        gamma = self.gamma_sqrt.square()[:, :, None, None]
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm
