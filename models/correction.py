"""Stage 3: the correction network and the fused pixel decoder.

The correction network is a copy of the trained VQ decoder that reads the continuous guidance ``g``
(16×16 per tile) instead of code vectors. Its up-sampling stages' features go through zero-initialised
1×1 convolutions and are added into the matching stages of the frozen VQ decoder, so training starts
exactly from the VQ decoder's output and learns only what the continuous stream can fix."""

from __future__ import annotations

import torch
from torch import nn

from .vq import Decoder, VQAutoencoder, VQConfig


class CorrectionNet(nn.Module):
    def __init__(self, vq_cfg: VQConfig, guidance_channels: int):
        super().__init__()
        self.decoder = Decoder(vq_cfg, in_channels=guidance_channels)
        self.proj = nn.ModuleList(nn.Conv2d(c, c, 1) for c in self.decoder.stage_channels)
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def init_from(self, vq_decoder: Decoder) -> None:
        """Copy every weight of the VQ decoder except its input convolution (different channels)."""
        own = self.decoder.state_dict()
        for k, v in vq_decoder.state_dict().items():
            if not k.startswith("conv_in") and k in own and own[k].shape == v.shape:
                own[k] = v.clone()
        self.decoder.load_state_dict(own)

    def forward(self, g: torch.Tensor) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.proj, self.decoder.features(g))]


class PixelDecoder(nn.Module):
    """Code vectors + guidance → RGB in [-1, 1]: the VQ decoder with the correction features added.
    It reads code vectors, not indices, so that masked positions can carry the predictor's expected
    code (``MaskedTokenPredictor.codes``); a full index map goes in as ``vq.quantizer.lookup(idx)``."""

    def __init__(self, vq: VQAutoencoder, correction: CorrectionNet | None):
        super().__init__()
        self.vq = vq
        self.correction = correction

    def forward(self, codes: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        extra = self.correction(g) if self.correction is not None else None
        return self.vq.decoder(codes, extra)
