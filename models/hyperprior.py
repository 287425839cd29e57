"""Continuous stream: a mean-scale hyperprior codec (Minnen et al. 2018) on the 4× downsampled image.

Shapes, for a full-resolution image of H×W (padded to multiples of 256):
  low-res image x   H/4  × W/4   (3 channels)
  latent y          H/64 × W/64  (``latent`` channels)        ÷16 of x
  hyper-latent z    H/256× W/256 (``hyper`` channels)          ÷64 of x
  guidance g        H/16 × W/16  (``channels``)                ÷4 of x, 16×16 per 256² tile

``g`` is the intermediate output of the synthesis transform that the transformer cross-attends to
and the correction decoder consumes: it is aligned with the VQ token grid.

The hyper synthesis uses nearest-upsampling + 3×3 convolutions + ReLU only, because the runtime
re-implements it in exact integer arithmetic (see ``runtime/fixedpoint.py``) so that encoder and
decoder derive bit-identical entropy parameters on any machine."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .entropy_models import FactorizedPrior, gaussian_likelihood
from .layers import GDN
from .upsampler import ContUpsampler

# The transforms' strides, in pixels of the low-res input (the stride-2 layers of ContinuousCodec):
Y_STRIDE = 16  # g_a: four stride-2 convolutions
Z_STRIDE = 64  # then h_a: two more
G_STRIDE = 4  # g_s_head: y upsampled ×4 (two stride-2 deconvolutions): the guidance, one cell per VQ token


@dataclass
class ContConfig:
    channels: int = field(default=96, metadata={"help": "channels of the transforms (and of the guidance g)"})
    latent: int = field(default=128, metadata={"help": "channels of the latent y"})
    hyper: int = field(default=64, metadata={"help": "channels of the hyper-latent z"})
    downscale: int = field(default=4, metadata={"help": "full resolution → the low-res input of this codec"})
    upsampler: int = field(default=0, metadata={"help": "> 0: a learned ×downscale up-sampling with this many "
                                                        "channels (models/upsampler.py)"})

    @property
    def latent_stride(self) -> int:
        """Full-resolution pixels per cell of y."""
        return Y_STRIDE * self.downscale

    @property
    def hyper_stride(self) -> int:
        """Full-resolution pixels per cell of z."""
        return Z_STRIDE * self.downscale

    @property
    def guidance_stride(self) -> int:
        """Full-resolution pixels per cell of the guidance g (must equal the VQ token's)."""
        return G_STRIDE * self.downscale


def conv(c_in: int, c_out: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


def deconv(c_in: int, c_out: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class HyperSynthesis(nn.Module):
    """ẑ → (mean, scale) of y. Only ops the integer runtime implements: up×2, conv3×3, ReLU."""

    def __init__(self, cfg: ContConfig):
        super().__init__()
        n = cfg.channels
        self.conv1 = nn.Conv2d(cfg.hyper, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)
        self.conv3 = nn.Conv2d(n, 2 * cfg.latent, 3, padding=1)

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.conv1(F.interpolate(z_hat, scale_factor=2.0, mode="nearest")))
        h = F.relu(self.conv2(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        mean, scale = self.conv3(h).chunk(2, dim=1)
        return mean, F.relu(scale)

    def layers(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]


class ContinuousCodec(nn.Module):
    def __init__(self, cfg: ContConfig):
        super().__init__()
        self.cfg = cfg
        n, m = cfg.channels, cfg.latent
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))
        self.h_a = nn.Sequential(conv(m, n, 3, 1), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, cfg.hyper))
        self.h_s = HyperSynthesis(cfg)
        self.g_s_head = nn.Sequential(deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True))
        self.g_s_tail = nn.Sequential(deconv(n, n), GDN(n, inverse=True), deconv(n, 3))
        self.prior = FactorizedPrior(cfg.hyper)
        self.upsampler = ContUpsampler(self.g_s_tail, cfg.downscale, cfg.upsampler) if cfg.upsampler else None

    def add_upsampler(self, channels: int = 64) -> None:
        """Give a trained codec a learned up-sampling that starts as its own tail + bicubic."""
        self.cfg.upsampler = channels
        self.upsampler = ContUpsampler(self.g_s_tail, self.cfg.downscale, channels)

    def lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution image in [-1, 1] → this codec's input: [0, 1], ``downscale``× smaller
        (block means, as the runtime's area resize)."""
        return F.avg_pool2d((x + 1) / 2, self.cfg.downscale)

    def analysis(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res image in [0, 1] → (y, z)."""
        y = self.g_a(x)
        return y, self.h_a(y)

    def guidance(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.g_s_head(y_hat)

    def reconstruct(self, g: torch.Tensor) -> torch.Tensor:
        """Guidance → the low-res image in [0, 1] (what the rate–distortion training measures)."""
        return self.g_s_tail(g)

    def full_resolution(self, g: torch.Tensor) -> torch.Tensor:
        """Guidance → full-resolution image in [0, 1]: the learned up-sampling, else bicubic."""
        if self.upsampler is not None:
            return self.upsampler(g)
        return F.interpolate(self.reconstruct(g), scale_factor=float(self.cfg.downscale), mode="bicubic",
                             align_corners=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, z = self.analysis(x)
        if self.training:
            z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            z_hat = z + (torch.round(z) - z).detach()
        else:
            z_noisy = z_hat = torch.round(z)
        mean, scale = self.h_s(z_hat)
        # Rate from additive noise, synthesis from straight-through rounded symbols ("mixed" training).
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y - mean) + mean
        y_hat = mean + (y - mean) + (torch.round(y - mean) - (y - mean)).detach()
        g = self.guidance(y_hat)
        return {
            "x_hat": self.reconstruct(g),
            "g": g,
            "lik_y": gaussian_likelihood(y_noisy, mean, scale),
            "lik_z": self.prior.likelihood(z_noisy),
        }
