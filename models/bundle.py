"""The release checkpoint ("bundle"): every trained part of HybridFlow in one small file.

It holds each network's config (as a dict) and fp16 weights, plus the statistics the runtime needs
that are measured on training data: the static prior of the codeword indices and the complexity
normalisation. ``hf-export --ckpt BUNDLE`` needs nothing else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.complexity import ComplexityModel
from . import checkpoint
from .correction import CorrectionNet, PixelDecoder
from .fusion import Fusion, FusionConfig
from .hyperprior import ContConfig, ContinuousCodec
from .transformer import MaskedTokenPredictor, TransformerConfig
from .vq import VQAutoencoder, VQConfig

BUNDLE_FORMAT = "hybridflow-bundle"
BUNDLE_VERSION = 1


@dataclass
class Components:
    vq: VQAutoencoder
    cont: ContinuousCodec
    predictor: MaskedTokenPredictor | None
    correction: CorrectionNet | None
    complexity: ComplexityModel
    index_counts: np.ndarray
    name: str
    random_init: bool
    fusion: Fusion | None = None  # merges the pixel decoder's and the continuous picture (models/fusion.py)
    # masked positions reach the pixel decoder as the predictor's expected code (how the correction
    # was trained, MaskedTokenPredictor.codes); False: its argmax's code, as before session 12
    soft_codes: bool = False

    def pixel_decoder(self) -> PixelDecoder:
        return PixelDecoder(self.vq, self.correction)

    def codebook(self) -> torch.Tensor:
        """The code vectors both decoders read, (n_codes, code_dim): the predictor's copy when there is
        one (so a sent index and a predicted one map through the same numbers), else the VQ model's."""
        if self.predictor is not None and self.predictor.cfg.code_dim:
            return self.predictor.codebook.detach().clone()
        return self.vq.quantizer.normalised_codebook().detach()

    def codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) → their code vectors (B, code_dim, H, W), as the runtime hands them over."""
        return self.codebook()[idx].permute(0, 3, 1, 2).contiguous()

    def eval(self) -> Components:
        for m in (self.vq, self.cont, self.predictor, self.correction, self.fusion):
            if m is not None:
                m.eval()
        return self


def _part(model: torch.nn.Module | None, cfg: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"config": dataclasses.asdict(cfg) if cfg is not None else None,
            "state": checkpoint.half_state(model.state_dict())}


def save_bundle(path: Path, c: Components) -> None:
    checkpoint.save(
        path,
        format=BUNDLE_FORMAT,
        version=BUNDLE_VERSION,
        name=c.name,
        random_init=c.random_init,
        vq=_part(c.vq, c.vq.cfg),
        cont=_part(c.cont, c.cont.cfg),
        predictor=_part(c.predictor, c.predictor.cfg if c.predictor else None),
        correction=_part(c.correction, None),
        **({"fusion": _part(c.fusion, c.fusion.cfg)} if c.fusion is not None else {}),
        complexity=dataclasses.asdict(c.complexity),
        index_counts=np.asarray(c.index_counts, np.int64).tolist(),
        soft_codes=c.soft_codes,
    )


def load_bundle(path: Path) -> Components:
    return components_from_payload(checkpoint.load(path), path)


def components_from_payload(ck: dict[str, Any], path: Path | str) -> Components:
    """Rebuild the networks from a bundle's payload (a loaded file, or one derived from a model directory)."""
    if ck.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a HybridFlow bundle (train a model and run `hf-train bundle`)")
    if ck.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle version {ck.get('version')} is not supported")
    vq_cfg = checkpoint.to_config(VQConfig, ck["vq"]["config"])
    vq = VQAutoencoder(vq_cfg)
    vq.load_state_dict(checkpoint.float_state(ck["vq"]["state"]))
    cont_cfg = checkpoint.to_config(ContConfig, ck["cont"]["config"])
    cont = ContinuousCodec(cont_cfg)
    cont.load_state_dict(checkpoint.float_state(ck["cont"]["state"]))
    predictor = correction = None
    if ck.get("predictor"):
        predictor = MaskedTokenPredictor(checkpoint.to_config(TransformerConfig, ck["predictor"]["config"]))
        predictor.load_state_dict(checkpoint.float_state(ck["predictor"]["state"]))
    if ck.get("correction"):
        state = checkpoint.float_state(ck["correction"]["state"])
        correction = CorrectionNet.from_state(vq_cfg, cont_cfg.channels, state)
    fusion = None
    if ck.get("fusion"):
        fusion = Fusion(checkpoint.to_config(FusionConfig, ck["fusion"]["config"]))
        fusion.load_state_dict(checkpoint.float_state(ck["fusion"]["state"]))
    return Components(vq, cont, predictor, correction, ComplexityModel(**ck["complexity"]),
                      np.asarray(ck["index_counts"]), ck["name"], bool(ck["random_init"]), fusion,
                      bool(ck.get("soft_codes", False))).eval()


def tiny_components(seed: int = 0, with_stage23: bool = True, with_fusion: bool = False,
                    correction_stages: int | None = None, output: str = "full") -> Components:
    """A tiny randomly initialised model for tests of export and runtime (never for real numbers);
    ``output`` is the VQ decoder's last stage (``VQConfig.output``)."""
    torch.manual_seed(seed)
    vq_cfg = VQConfig(channels=(8, 8, 16, 16), bottleneck=16, code_dim=8, decoder_norm="channel", output=output)
    cont_cfg = ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=1, context_slices=2,
                          context_hidden=8)
    vq, cont = VQAutoencoder(vq_cfg), ContinuousCodec(cont_cfg)
    with torch.no_grad():  # an untrained analysis gives |y| ≈ 0.07: every residual 0 at every rate point
        cont.g_a[-1].weight.mul_(40)
        for net in cont.context.nets:  # non-zero so the context really moves μ and the scale steps in tests
            torch.nn.init.normal_(net[-1].weight, std=0.5)
            torch.nn.init.normal_(net[-1].bias, std=0.5)
    # rate points around the base: coarser (≈ ½) and finer (≈ 2), a different gain per channel
    spread = torch.rand(2, cont_cfg.latent, generator=torch.Generator().manual_seed(seed)) * 0.4 + 0.8
    gain = torch.stack([0.5 * spread[0], torch.ones(cont_cfg.latent), 2 * spread[1]])
    cont.set_rate_gains(gain, 1 / gain)
    predictor = correction = None
    if with_stage23:
        predictor = MaskedTokenPredictor(TransformerConfig(guidance_channels=16, dim=32, heads=2, enc_layers=1,
                                                           dec_layers=1, code_dim=8, guidance_input=True))
        predictor.set_codebook(vq.quantizer.normalised_codebook().detach())
        correction = CorrectionNet(vq_cfg, cont_cfg.channels, correction_stages)
        correction.init_from(vq.decoder)
        for p in correction.proj:  # non-zero so the correction path is really exercised in tests
            torch.nn.init.normal_(p.weight, std=0.01)
    fusion = None
    if with_stage23 and with_fusion:
        fusion = Fusion(FusionConfig(channels=8, blocks=1, lowpass_sigma=2.0))  # the anchor too
        torch.nn.init.normal_(fusion.out[-1].weight, std=0.05)  # non-zero: the fusion really changes pixels
    rng = np.random.default_rng(seed)
    return Components(vq, cont, predictor, correction, ComplexityModel(),
                      rng.integers(0, 50, vq_cfg.n_codes), f"tiny-random-{seed}", True, fusion,
                      soft_codes=with_stage23).eval()
