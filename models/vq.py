"""Discrete stream: a VQGAN-style autoencoder with downsampling 16 and a 1024-entry codebook.

The codebook uses low-dimensional, l2-normalised codes (as in ViT-VQGAN): nearest-neighbour
search becomes a cosine similarity, which keeps far more codes alive than a raw Euclidean
codebook at this model size. Dead codes are restarted from recent encoder outputs during
training (see :meth:`Quantizer.restart_dead_codes`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NORMS, Downsample, ResBlock, SubpixelOut, Upsample, group_norm, norm_layer

# The decoder's last ×2 stage: "full" draws pixels from full-resolution features (nearest ×2, a residual block,
# norm and a 3×3 output convolution there); "subpixel" from half-resolution ones (layers.SubpixelOut)
OUTPUTS = ("full", "subpixel")


@dataclass
class VQConfig:
    channels: tuple[int, ...] = field(default=(32, 64, 96, 128), metadata={"help": "channels of each ×2 down/up "
                                                                                  "stage (their count sets the "
                                                                                  "token size)"})
    bottleneck: int = field(default=128, metadata={"help": "channels at the token resolution"})
    code_dim: int = field(default=16, metadata={"help": "dimension of the l2-normalised codes"})
    n_codes: int = field(default=1024, metadata={"help": "codebook size"})
    beta: float = field(default=0.25, metadata={"help": "commitment weight"})
    # "channel": position-wise, so windowed decoding equals whole-image decoding (layers.ChannelNorm);
    # "group" is what models up to s7 were trained with (statistics over the whole map: seams)
    decoder_norm: str = field(default="group", metadata={"help": "decoder normalisation ('channel': "
                                                                 "position-wise, seamless)", "choices": NORMS})
    # "subpixel" since session 18: the full-resolution stage was ≈ half of a decode's time for ≈ a quarter of
    # its multiply-adds (its features are the largest tensors; norms and activations there are memory-bound)
    output: str = field(default="full", metadata={"help": "the last ×2 stage: 'full' (features at full "
                                                          "resolution) or 'subpixel' (pixels from half-resolution "
                                                          "features, layers.SubpixelOut)", "choices": OUTPUTS})

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        c_prev = ch[0]
        for c in ch:
            blocks += [ResBlock(c_prev, c), Downsample(c)]
            c_prev = c
        self.down = nn.Sequential(*blocks)
        self.mid = ResBlock(c_prev, cfg.bottleneck)
        self.norm_out = group_norm(cfg.bottleneck)
        self.conv_out = nn.Conv2d(cfg.bottleneck, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of the encoder. ``forward`` accepts one additive feature map per up-sampling stage:
    this is where the correction network of stage 3 injects its features."""

    def __init__(self, cfg: VQConfig, in_channels: int | None = None):
        super().__init__()
        self.cfg = cfg
        ch = tuple(reversed(cfg.channels))
        norm = cfg.decoder_norm
        self.conv_in = nn.Conv2d(in_channels or cfg.code_dim, cfg.bottleneck, 3, padding=1)
        self.mid = ResBlock(cfg.bottleneck, ch[0], norm)
        if cfg.output not in OUTPUTS:
            raise ValueError(f"unknown decoder output {cfg.output!r}; choose one of {', '.join(OUTPUTS)}")
        self.ups = nn.ModuleList()
        c_prev = ch[0]
        for c in ch[:-1] if cfg.output == "subpixel" else ch:
            self.ups.append(nn.Sequential(Upsample(c_prev), ResBlock(c_prev, c, norm)))
            c_prev = c
        self.stage_channels = ch
        if cfg.output == "subpixel":  # as many values per full-resolution pixel as the full stage's features
            self.out = SubpixelOut(c_prev, 4 * ch[-1], norm)
        else:
            self.norm_out = norm_layer(c_prev, norm)
            self.conv_out = nn.Conv2d(c_prev, 3, 3, padding=1)

    @staticmethod
    def receptive_radius(cfg: VQConfig) -> float:
        """How far (in tokens) an output pixel sees: 3×3 convolutions at each resolution (conv_in
        and the middle block's two at token resolution; the up-sampling conv and a block's two at
        each ×2 stage; conv_out at full resolution, or SubpixelOut's two at half resolution). Windows need at
        least this margin."""
        return sum(Decoder.radii(cfg, 0))

    @staticmethod
    def radii(cfg: VQConfig, stages: int) -> tuple[float, float]:
        """``receptive_radius`` of ``head`` with ``stages`` up-sampling stages and of the ``tail`` after
        it, in tokens. The head's is the larger (its convolutions are coarse), the tail's work the
        larger (its are fine): decoding in windows, the tail needs only its own small margin."""
        head, scale = 3.0, 1.0
        for _ in range(stages):
            scale *= 2
            head += 3 / scale
        tail = 0.0
        subpixel = cfg.output == "subpixel"
        for _ in range(stages, len(cfg.channels) - subpixel):
            scale *= 2
            tail += 3 / scale
        return head, tail + (2 if subpixel else 1) / scale

    def features(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of each up-sampling stage (what the correction network adds to)."""
        h = self.mid(self.conv_in(z))
        feats = []
        for up in self.ups:
            h = up(h)
            feats.append(h)
        return feats

    def head(self, z: torch.Tensor, extra: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Token resolution and one up-sampling stage per ``extra`` map, which is added to its output
        (where the correction network of stage 3 injects its features)."""
        h = self.mid(self.conv_in(z))
        for up, e in zip(self.ups, extra or []):
            h = up(h) + e
        return h

    def tail(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """The up-sampling stages from ``start`` on and the output layers: ``head``'s features → pixels."""
        for up in self.ups[start:]:
            h = up(h)
        return self.output(h)

    @property
    def last_layer(self) -> nn.Conv2d:
        """The convolution that writes pixels (what VQGAN's adaptive GAN weight differentiates)."""
        return self.out.conv2 if self.cfg.output == "subpixel" else self.conv_out

    def drop_output(self) -> None:
        """Features only (the correction network's copy): the layers that draw pixels are never run."""
        for name in ("out", "norm_out", "conv_out"):
            if hasattr(self, name):
                delattr(self, name)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The last stage's features → pixels."""
        return self.out(h) if self.cfg.output == "subpixel" else self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, z: torch.Tensor, extra: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.tail(self.head(z, extra), len(extra or []))


class Quantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.beta = cfg.beta
        self.codebook = nn.Parameter(torch.randn(cfg.n_codes, cfg.code_dim))
        self.register_buffer("usage", torch.zeros(cfg.n_codes))

    def normalised_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, D, H, W) → code indices (B, H, W)."""
        z = F.normalize(z, dim=1)
        sim = torch.einsum("bdhw,nd->bnhw", z, self.normalised_codebook())
        return sim.argmax(dim=1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (B, H, W) → code vectors (B, D, H, W)."""
        return F.embedding(idx, self.normalised_codebook()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = F.normalize(z, dim=1)
        idx = self.indices(z)
        zq = self.lookup(idx)
        loss = self.beta * F.mse_loss(z, zq.detach()) + F.mse_loss(zq, z.detach())
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(idx.flatten(), minlength=self.usage.numel()).float()
                self.usage.mul_(0.99).add_(counts, alpha=0.01)
        return z + (zq - z).detach(), idx, loss

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, threshold: float = 0.03) -> int:
        """Re-seed codes whose running usage fell below ``threshold`` with random encoder outputs."""
        dead = (self.usage < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = F.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        pick = torch.randint(0, pool.shape[0], (dead.numel(),))
        self.codebook.data[dead] = pool[pick] + 0.01 * torch.randn_like(pool[pick])
        self.usage[dead] = 1.0
        return int(dead.numel())


class VQAutoencoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x in [-1, 1]. Returns reconstruction, indices, codebook loss, raw encoder output."""
        z = self.encoder(x)
        zq, idx, qloss = self.quantizer(z)
        return self.decoder(zq), idx, qloss, z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices(self.encoder(x))

    def decode(self, idx: torch.Tensor, extra: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(idx), extra)
