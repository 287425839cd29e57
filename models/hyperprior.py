"""Continuous stream: a mean-scale hyperprior codec (Minnen et al. 2018) on the 4× downsampled image.

Shapes, for a full-resolution image of H×W (padded to multiples of 256):
  low-res image x   H/4  × W/4   (3 channels)
  latent y          H/64 × W/64  (``latent`` channels)        ÷16 of x
  hyper-latent z    H/256× W/256 (``hyper`` channels)          ÷64 of x
  guidance g        H/16 × W/16  (``channels``)                ÷4 of x, 16×16 per 256² tile

``g`` is the intermediate output of the synthesis transform that the transformer cross-attends to
and the correction decoder consumes: it is aligned with the VQ token grid.

Rate points (Cui et al. 2021, "asymmetric gained" variational image compression, adapted so that every
network stays frozen): point k has a gain vector ``gain[k]`` and an inverse gain ``inv_gain[k]`` over the
``latent`` channels. The encoder codes round(y·gain − μ·gain) with std σ·gain; the decoder forms
ŷ = (residual + μ·gain)·inv_gain. A gain below 1 quantises coarser (fewer bits), above 1 finer. The
synthesis only ever sees ŷ in the base point's units, so the transformer and pixel decoder that consume
g need no retraining. The base point has gain = inv_gain = 1 exactly: the rate the networks were
trained at, and the same bits as a model without rate points. Gains are integer multiples of
2^-GAIN_BITS so that the runtime's products with μ and σ (multiples of 2^-10) are exact in float64.

The hyper synthesis uses nearest-upsampling + 3×3 convolutions + ReLU only, because the runtime
re-implements it in exact integer arithmetic (see ``runtime/fixedpoint.py``) so that encoder and
decoder derive bit-identical entropy parameters on any machine."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.rates import GAIN_BITS, MAX_POINTS
from .context import ChannelContext
from .entropy_models import FactorizedPrior, gaussian_likelihood
from .layers import GDN
from .upsampler import BicubicUp, ContUpsampler

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
    rate_points: int = field(default=1, metadata={"help": "rate points (gain vectors, ordered by increasing rate; "
                                                          "trained with --gains-only); 1 = a fixed-rate codec"})
    base_rate: int = field(default=0, metadata={"help": "the point whose gains are exactly 1: the rate the "
                                                        "networks were trained at"})
    context_slices: int = field(default=0, metadata={"help": "> 0: a channel-wise context over this many slices "
                                                             "of y (models/context.py; trained with --context-only)"})
    context_hidden: int = field(default=64, metadata={"help": "hidden channels of each slice's context network"})
    context_kernel: int = field(default=3, metadata={"help": "side of the context's first convolution (1 or 3)"})

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
        if not 1 <= cfg.rate_points <= MAX_POINTS or not 0 <= cfg.base_rate < cfg.rate_points:
            raise ValueError(f"rate_points must be 1…{MAX_POINTS} and base_rate one of them, "
                             f"got {cfg.rate_points} / {cfg.base_rate}")
        self.cfg = cfg
        n, m = cfg.channels, cfg.latent
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))
        self.h_a = nn.Sequential(conv(m, n, 3, 1), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, cfg.hyper))
        self.h_s = HyperSynthesis(cfg)
        self.g_s_head = nn.Sequential(deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True))
        self.g_s_tail = nn.Sequential(deconv(n, n), GDN(n, inverse=True), deconv(n, 3))
        self.prior = FactorizedPrior(cfg.hyper)
        self.upsampler = ContUpsampler(self.g_s_tail, cfg.downscale, cfg.upsampler) if cfg.upsampler else None
        self.enlarge = BicubicUp(3, cfg.downscale)  # no weights: checkpoints do not change
        self.context = self._new_context() if cfg.context_slices else None
        if cfg.rate_points > 1:
            # integer buffers: exact in fp16 bundles (half_state leaves integers alone), not trained by
            # the ordinary optimiser; ``--gains-only`` training writes them (stage1_cont.RatePoints)
            one = torch.full((cfg.rate_points, m), 1 << GAIN_BITS, dtype=torch.int32)
            self.register_buffer("rate_gain", one)
            self.register_buffer("rate_inv_gain", one.clone())

    def add_upsampler(self, channels: int = 64) -> None:
        """Give a trained codec a learned up-sampling that starts as its own tail + bicubic."""
        self.cfg.upsampler = channels
        self.upsampler = ContUpsampler(self.g_s_tail, self.cfg.downscale, channels)

    def _new_context(self) -> ChannelContext:
        cfg = self.cfg
        return ChannelContext(cfg.latent, cfg.context_slices, cfg.context_hidden, cfg.context_kernel)

    def add_context(self, slices: int, hidden: int, kernel: int) -> None:
        """Give a trained codec a channel-wise context that starts as the plain hyperprior."""
        self.cfg.context_slices, self.cfg.context_hidden, self.cfg.context_kernel = slices, hidden, kernel
        self.context = self._new_context().to(self.prior.matrices[0].device)

    def rate_gains(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain) of rate point ``k`` as float (latent,) vectors."""
        if not 0 <= k < self.cfg.rate_points:
            raise ValueError(f"rate point {k} does not exist (the model has {self.cfg.rate_points})")
        if self.cfg.rate_points == 1:
            one = torch.ones(self.cfg.latent, device=self.prior.matrices[0].device)
            return one, one
        unit = 2.0**-GAIN_BITS
        return self.rate_gain[k].float() * unit, self.rate_inv_gain[k].float() * unit

    @torch.no_grad()
    def set_rate_gains(self, gain: torch.Tensor, inv_gain: torch.Tensor) -> None:
        """Store float (rate_points, latent) gains, rounded onto the 2^-GAIN_BITS grid (at least one
        unit); the base point stays exactly 1 whatever is passed for it."""
        snap = [torch.round(g.detach().float() * (1 << GAIN_BITS)).clamp_min(1).to(torch.int32)
                for g in (gain, inv_gain)]
        for q in snap:
            q[self.cfg.base_rate] = 1 << GAIN_BITS
        self.rate_gain.copy_(snap[0])
        self.rate_inv_gain.copy_(snap[1])

    def without_rate_points(self) -> ContinuousCodec:
        """The same networks (shared, not copied) without the gain buffers: what the ONNX graphs are
        exported from. The exporter numbers a module's unnamed tensors over all its parameters and
        buffers, so unused buffers would rename initialisers and change the graph files' bytes."""
        if self.cfg.rate_points == 1:
            return self
        twin = copy.copy(self)
        twin.__dict__["_buffers"] = {k: v for k, v in self._buffers.items() if k not in ("rate_gain", "rate_inv_gain")}
        twin.cfg = dataclasses.replace(self.cfg, rate_points=1, base_rate=0)
        return twin

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

    def bicubic(self, g: torch.Tensor) -> torch.Tensor:
        """Guidance → the low-res image enlarged ×downscale, bicubic: the picture without a learned
        up-sampling, and the base the learned one adds its residual to."""
        return self.enlarge(self.reconstruct(g))

    def full_resolution(self, g: torch.Tensor) -> torch.Tensor:
        """Guidance → full-resolution image in [0, 1]: the learned up-sampling, else bicubic."""
        return self.upsampler(g) if self.upsampler is not None else self.bicubic(g)

    def decoded_latent(self, y: torch.Tensor, mean: torch.Tensor,
                       gains: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """ŷ as the decoder rebuilds it from the coded symbols: (round(y·gain − μ·gain) + μ·gain)·inv_gain,
        the expression of runtime/rates.py (the base point: round(y − μ) + μ). Rounding is straight-through,
        so in training the synthesis sees rounded symbols while the analysis still gets a gradient; in
        eval this *is* the runtime's decode. ``gains``: (gain, inverse gain), each (latent,) or per sample
        (batch, latent); None = base point."""
        if gains is not None:
            gain = gains[0].reshape(-1, self.cfg.latent, 1, 1)
            y, mean = y * gain, mean * gain
        r = y - mean
        y_hat = mean + r + (torch.round(r) - r).detach()
        return y_hat if gains is None else y_hat * gains[1].reshape(-1, self.cfg.latent, 1, 1)

    def decoded_y(self, y: torch.Tensor, z_hat: torch.Tensor,
                  gains: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """ŷ as the runtime decodes it from y and the rounded ẑ: slice by slice through the context if
        the codec has one, else ``decoded_latent`` around the hyperprior's mean."""
        mean, scale = self.h_s(z_hat)
        if self.context is not None:
            return self.context(y, mean, scale, gains, noisy=False)[0]
        return self.decoded_latent(y, mean, gains)

    def forward(self, x: torch.Tensor, gains: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """``gains``: (gain, inverse gain), each (latent,) or per sample (batch, latent); None = base point."""
        y, z = self.analysis(x)
        if self.training:
            z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            z_hat = z + (torch.round(z) - z).detach()
        else:
            z_noisy = z_hat = torch.round(z)
        mean, scale = self.h_s(z_hat)
        if self.context is not None:  # slice by slice, as the runtime codes it
            y_hat, lik_y = self.context(y, mean, scale, gains, noisy=self.training)
            g = self.guidance(y_hat)
            return {"x_hat": self.reconstruct(g), "g": g, "lik_y": lik_y, "lik_z": self.prior.likelihood(z_noisy)}
        # Rate from additive noise, synthesis from straight-through rounded symbols ("mixed" training).
        g = self.guidance(self.decoded_latent(y, mean, gains))
        if gains is not None:
            gain = gains[0].reshape(-1, self.cfg.latent, 1, 1)
            y, mean, scale = y * gain, mean * gain, scale * gain
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y - mean) + mean
        return {
            "x_hat": self.reconstruct(g),
            "g": g,
            "lik_y": gaussian_likelihood(y_noisy, mean, scale),
            "lik_z": self.prior.likelihood(z_noisy),
        }
