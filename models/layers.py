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


class SubpixelDeconv(nn.Module):
    """A stride-s transposed convolution computed as an ordinary convolution at the input resolution into
    s² output phases, then a pixel shuffle: the same function (to float rounding), other operators.

    Why: a transposed convolution's output pixel o = s·q + r reads only the taps t ≡ r + p (mod s), at
    input offsets j = (r + p − t) / s, so each phase r is a small convolution of the input. onnxruntime's
    CPU ``ConvTranspose`` ran ≈ 30 GMAC/s on one core where its ``Conv`` runs several times that, and
    has no int8 kernel: in the learned ×4 up-sampling the three transposed convolutions took ≈ 30 % of
    the decode time for ≈ 13 % of its multiply-adds. Export swaps them in (``subpixel_deconvs``); training
    keeps ``nn.ConvTranspose2d``, whose weights this reads (and ``deconv_weight`` gives back, so a
    model directory still rebuilds its training bundle: export/bundle_index.py)."""

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        (s, s2), (k, k2), (p, p2) = deconv.stride, deconv.kernel_size, deconv.padding
        op = deconv.output_padding[0]
        if (s, k, p) != (s2, k2, p2) or deconv.output_padding != (op, op) or deconv.groups != 1 \
                or deconv.dilation != (1, 1) or k + op - 2 * p != s:
            raise ValueError(f"not a square, ungrouped transposed convolution whose output is exactly {s}× its "
                             f"input: {deconv}")
        kernel = self.phase_kernel(deconv.weight.detach(), s, p)
        c_in = deconv.in_channels
        self.conv = nn.Conv2d(c_in, kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2)
        self.conv.weight.data.copy_(kernel)
        bias = deconv.bias.detach() if deconv.bias is not None else torch.zeros(deconv.out_channels)
        self.conv.bias.data.copy_(bias.repeat_interleave(s * s))
        self.shuffle = nn.PixelShuffle(s)

    @staticmethod
    def _taps(s: int, k: int, p: int) -> tuple[int, list[tuple[int, int, int]]]:
        """(reach, [(phase r, tap t, kernel index j + reach)]): each tap belongs to exactly one phase."""
        pairs = [(r, t, (r + p - t) // s) for r in range(s) for t in range(k) if (r + p - t) % s == 0]
        reach = max(abs(j) for _, _, j in pairs)
        return reach, [(r, t, j + reach) for r, t, j in pairs]

    @classmethod
    def phase_kernel(cls, w: torch.Tensor, s: int, p: int) -> torch.Tensor:
        """(c_in, c_out, k, k) transposed-convolution weight → (c_out·s², c_in, K, K) convolution weight."""
        c_in, c_out, k = w.shape[0], w.shape[1], w.shape[2]
        reach, taps = cls._taps(s, k, p)
        kernel = w.new_zeros(c_out, s, s, c_in, 2 * reach + 1, 2 * reach + 1)
        for ry, ty, jy in taps:
            for rx, tx, jx in taps:
                kernel[:, ry, rx, :, jy, jx] = w[:, :, ty, tx].T
        return kernel.reshape(c_out * s * s, c_in, 2 * reach + 1, 2 * reach + 1)

    @classmethod
    def deconv_weight(cls, kernel: torch.Tensor, s: int, k: int, p: int) -> torch.Tensor:
        """The inverse of ``phase_kernel``: the transposed convolution's (c_in, c_out, k, k) weight."""
        c_out, c_in, size = kernel.shape[0] // (s * s), kernel.shape[1], kernel.shape[-1]
        kernel = kernel.reshape(c_out, s, s, c_in, size, size)
        w = kernel.new_zeros(c_in, c_out, k, k)
        _, taps = cls._taps(s, k, p)
        for ry, ty, jy in taps:
            for rx, tx, jx in taps:
                w[:, :, ty, tx] = kernel[:, ry, rx, :, jy, jx].T
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def subpixel_deconvs(module: nn.Module) -> int:
    """Replace, in place, every ``nn.ConvTranspose2d`` under ``module`` by its ``SubpixelDeconv`` (a module
    held by several parents, like the codec's synthesis tail inside the up-sampling, gets one twin).
    Returns how many were replaced."""
    twins: dict[int, SubpixelDeconv] = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ConvTranspose2d):
                setattr(parent, name, twins.setdefault(id(child), SubpixelDeconv(child)))
    return len(twins)


class ShuffledConv(nn.Module):
    """``conv(pixel_shuffle(x, s))`` for a stride-1 'same' convolution, computed as one convolution at the
    shuffle's input resolution into s² output phases, then the shuffle: the same function (to float
    rounding). Why: the convolution then reads and writes s²× fewer, s²× deeper positions instead of the
    largest tensor of the graph; in the learned ×4 up-sampling the last 16 → 3 convolution at full
    resolution and the shuffle before it were a quarter of the decode time. It does s²× the
    multiply-adds of the original (most of its taps are zero), cheap for a narrow last layer only."""

    def __init__(self, conv: nn.Conv2d, scale: int):
        super().__init__()
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.padding != (k // 2, k // 2) \
                or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"not an odd, square, stride-1 'same' convolution: {conv}")
        kernel = self.phase_kernel(conv.weight.detach(), scale)
        self.conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2)
        self.conv.weight.data.copy_(kernel)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.conv.bias.data.copy_(bias.repeat_interleave(scale * scale))
        self.shuffle = nn.PixelShuffle(scale)

    @staticmethod
    def _taps(s: int, k: int) -> tuple[int, list[tuple[int, int, int, int]]]:
        """(reach, [(output phase r, tap t, input phase, kernel index)]) of a k-tap convolution after a ×s shuffle."""
        h = k // 2
        pairs = [(r, t, *divmod(r + t - h, s)) for r in range(s) for t in range(k)]  # (r, t, offset, phase)
        reach = max(abs(d) for _, _, d, _ in pairs)
        return reach, [(r, t, q, d + reach) for r, t, d, q in pairs]

    @classmethod
    def phase_kernel(cls, w: torch.Tensor, s: int) -> torch.Tensor:
        """(c_out, c_in, k, k) weight → (c_out·s², c_in·s², K, K) weight of the convolution before the shuffle."""
        c_out, c_in, k = w.shape[0], w.shape[1], w.shape[2]
        reach, taps = cls._taps(s, k)
        size = 2 * reach + 1
        kernel = w.new_zeros(c_out, s, s, c_in, s, s, size, size)
        for ry, ty, qy, jy in taps:
            for rx, tx, qx, jx in taps:
                kernel[:, ry, rx, :, qy, qx, jy, jx] = w[:, :, ty, tx]
        return kernel.reshape(c_out * s * s, c_in * s * s, size, size)

    @classmethod
    def conv_weight(cls, kernel: torch.Tensor, s: int, k: int) -> torch.Tensor:
        """The inverse of ``phase_kernel`` (read from the first output phase)."""
        c_out, c_in, size = kernel.shape[0] // (s * s), kernel.shape[1] // (s * s), kernel.shape[-1]
        kernel = kernel.reshape(c_out, s, s, c_in, s, s, size, size)
        w = kernel.new_zeros(c_out, c_in, k, k)
        _, taps = cls._taps(s, k)
        for ry, ty, qy, jy in taps:
            for rx, tx, qx, jx in taps:
                if ry == rx == 0:
                    w[:, :, ty, tx] = kernel[:, 0, 0, :, qy, qx, jy, jx]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def shuffled_convs(module: nn.Module) -> int:
    """In every ``nn.Sequential`` under ``module``, rewrite the run pixel shuffle → ReLU → narrow convolution
    as ReLU → ``ShuffledConv`` (ReLU is position-wise, so it commutes with the shuffle). Narrow: at most
    1/s² as many output as input channels (an output layer), where the s²× multiply-adds stay small. In
    place; returns how many were rewritten."""
    done = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        layers, changed = list(seq), False
        for i in range(len(layers) - 2):
            a, b, c = layers[i : i + 3]
            if isinstance(a, nn.PixelShuffle) and isinstance(b, nn.ReLU) and isinstance(c, nn.Conv2d) \
                    and c.out_channels * a.upscale_factor**2 <= c.in_channels:
                layers[i : i + 3] = [nn.ReLU(), ShuffledConv(c, a.upscale_factor)]
                changed = True
                done += 1
                break  # (one per Sequential: the indices after it moved)
        if changed:
            seq._modules.clear()
            for j, layer in enumerate(layers):
                seq.add_module(str(j), layer)
    return done


class UnshuffledConv(nn.Module):
    """A stride-s convolution whose output is exactly 1/s of its input (k = s + 2p; even sides), computed as
    a pixel unshuffle (space to depth) followed by a stride-1 convolution of the s² input phases: the same
    function (to float rounding). Why: the fusion's first convolution (6 → 32 channels, 4×4, stride 2, on the
    two full-resolution pictures) then reads the same 2×2 phases of the pictures as its output convolutions
    (models/fusion.py ``HalfResolutionFusion``), one half-resolution int8 convolution among the others (its
    inputs, 8-bit pixels, quantise exactly) instead of a full-resolution fp32 one."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        (s, s2), (k, k2), (p, p2) = conv.stride, conv.kernel_size, conv.padding
        if (s, k, p) != (s2, k2, p2) or s < 2 or k != s + 2 * p or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"not a square, ungrouped convolution whose output is exactly 1/{s} of its input: {conv}")
        kernel = self.phase_kernel(conv.weight.detach(), s, p)
        self.unshuffle = nn.PixelUnshuffle(s)
        self.conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2)
        self.conv.weight.data.copy_(kernel)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.conv.bias.data.copy_(bias)

    @staticmethod
    def _taps(s: int, k: int, p: int) -> tuple[int, list[tuple[int, int, int]]]:
        """(reach, [(tap t, input phase, kernel index)]): input pixel s·q − p + t = s·(q + d) + phase."""
        pairs = [(t, *divmod(t - p, s)) for t in range(k)]  # (t, d, phase)
        reach = max(abs(d) for _, d, _ in pairs)
        return reach, [(t, r, d + reach) for t, d, r in pairs]

    @classmethod
    def phase_kernel(cls, w: torch.Tensor, s: int, p: int) -> torch.Tensor:
        """(c_out, c_in, k, k) stride-s weight → (c_out, c_in·s², K, K) weight over the unshuffled input."""
        c_out, c_in, k = w.shape[0], w.shape[1], w.shape[2]
        reach, taps = cls._taps(s, k, p)
        size = 2 * reach + 1
        kernel = w.new_zeros(c_out, c_in, s, s, size, size)
        for ty, ry, jy in taps:
            for tx, rx, jx in taps:
                kernel[:, :, ry, rx, jy, jx] = w[:, :, ty, tx]
        return kernel.reshape(c_out, c_in * s * s, size, size)

    @classmethod
    def conv_weight(cls, kernel: torch.Tensor, s: int, k: int, p: int) -> torch.Tensor:
        """The inverse of ``phase_kernel``."""
        c_out, c_in, size = kernel.shape[0], kernel.shape[1] // (s * s), kernel.shape[-1]
        kernel = kernel.reshape(c_out, c_in, s, s, size, size)
        w = kernel.new_zeros(c_out, c_in, k, k)
        _, taps = cls._taps(s, k, p)
        for ty, ry, jy in taps:
            for tx, rx, jx in taps:
                w[:, :, ty, tx] = kernel[:, :, ry, rx, jy, jx]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.unshuffle(x))

