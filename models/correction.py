"""Stage 3: the correction network and the fused pixel decoder.

The correction network is a copy of the trained VQ decoder that reads the continuous guidance ``g``
(16×16 per tile) instead of code vectors. Its up-sampling stages' features go through zero-initialised
1×1 convolutions and are added into the matching stages of the frozen VQ decoder, so training starts
exactly from the VQ decoder's output and learns only what the continuous stream can fix.

Since session 15 the correction may feed only the first ``stages`` up-sampling stages (the coarse ones):
its finer stages are the costliest part of decoding (the two full-resolution-side stages of a copy of the
decoder are ≈ 40 % of the pixel decoder's multiply-adds), and the VQ decoder's own fine stages, trained
with it, carry its correction up to full resolution. The weights say how many stages a network has
(``from_state``), so checkpoints need no extra field."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .vq import Decoder, VQAutoencoder, VQConfig


class CorrectionNet(nn.Module):
    def __init__(self, vq_cfg: VQConfig, guidance_channels: int, stages: int | None = None):
        super().__init__()
        self.decoder = Decoder(vq_cfg, in_channels=guidance_channels)
        n = len(self.decoder.ups) if stages is None else stages
        if not 1 <= n <= len(self.decoder.ups):
            raise ValueError(f"correction stages must be 1 … {len(self.decoder.ups)}, got {stages}")
        # the stages it does not feed are not built: their convolutions would be pure cost
        self.decoder.ups = self.decoder.ups[:n]
        self.decoder.drop_output()  # features only: never drawn as a picture
        self.proj = nn.ModuleList(nn.Conv2d(c, c, 1) for c in self.decoder.stage_channels[:n])
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    @property
    def stages(self) -> int:
        return len(self.proj)

    @staticmethod
    def stages_in(state: Mapping[str, torch.Tensor]) -> int:
        """How many up-sampling stages a saved correction network feeds (one ``proj`` each)."""
        return len({k.split(".")[1] for k in state if k.startswith("proj.")})

    @classmethod
    def from_state(cls, vq_cfg: VQConfig, guidance_channels: int, state: Mapping[str, torch.Tensor],
                   stages: int | None = None) -> CorrectionNet:
        """A network with ``state``'s weights, as many stages as it has (or the first ``stages`` of them:
        a shallower network started from a deeper one's weights). Keys of parts a correction network
        never uses (older checkpoints saved its decoder's unused output layers) are dropped."""
        net = cls(vq_cfg, guidance_channels, stages or cls.stages_in(state))
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in own})  # strict: every own weight given
        return net

    def init_from(self, vq_decoder: Decoder) -> None:
        """Copy every weight of the VQ decoder except its input convolution (different channels)."""
        own = self.decoder.state_dict()
        for k, v in vq_decoder.state_dict().items():  # (the stages and output layers it lacks are skipped)
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

    @property
    def stages(self) -> int:
        """Up-sampling stages in ``head``: those the correction network feeds."""
        return self.correction.stages if self.correction is not None else 0

    def head(self, codes: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Everything the guidance reaches (coarse, wide receptive field, ≈ 11 % of the work): features
        at ``2**stages`` cells per token. The runtime decodes large pictures as head and tail, each in
        windows with its own margin (runtime/codec.py)."""
        return self.vq.decoder.head(codes, self.correction(g) if self.correction is not None else None)

    def tail(self, features: torch.Tensor) -> torch.Tensor:
        """``head``'s features → RGB in [-1, 1] (fine, narrow receptive field, most of the work)."""
        return self.vq.decoder.tail(features, self.stages)

    def forward(self, codes: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(codes, g))
