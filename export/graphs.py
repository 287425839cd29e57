"""One small wrapper module per ONNX graph the runtime runs.

Every graph takes and returns images as float32 in [0, 1], NCHW; indices are int64. The wrappers
fix those conventions in one place, so the models themselves keep their training conventions."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.bundle import Components
from ..models.correction import PixelDecoder
from ..models.fusion import Fusion, HalfResolutionFusion
from ..models.hyperprior import ContinuousCodec
from ..models.layers import shuffled_convs, subpixel_deconvs
from ..models.transformer import MaskedTokenPredictor
from ..models.vq import VQAutoencoder
from ..runtime.tiling import TILE
from .int8_weights import linear_keys


class VQEncoderGraph(nn.Module):
    def __init__(self, vq: VQAutoencoder):
        super().__init__()
        self.vq = vq

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vq.quantizer.indices(self.vq.encoder(image * 2 - 1))


class VQDecoderGraph(nn.Module):
    """Code vectors (B, code_dim, H, W) → RGB in [0, 1]. Both decoders read code vectors, not indices:
    the runtime looks sent indices up in the manifest's codebook, the predictor hands over codes."""

    def __init__(self, vq: VQAutoencoder):
        super().__init__()
        self.vq = vq

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return ((self.vq.decoder(codes) + 1) / 2).clamp(0, 1)


class ContAnalysisGraph(nn.Module):
    def __init__(self, cont: ContinuousCodec):
        super().__init__()
        self.cont = cont

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.cont.g_a(image)


class HyperAnalysisGraph(nn.Module):
    """y → z, separate from the analysis so the runtime can run the analysis in windows."""

    def __init__(self, cont: ContinuousCodec):
        super().__init__()
        self.cont = cont

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.cont.h_a(y)


class ContSynthesisGraph(nn.Module):
    def __init__(self, cont: ContinuousCodec):
        super().__init__()
        self.cont = cont

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.cont.guidance(y_hat)


class ContReconstructGraph(nn.Module):
    def __init__(self, cont: ContinuousCodec):
        super().__init__()
        self.cont = cont

    def forward(self, guidance: torch.Tensor) -> torch.Tensor:
        """The full-resolution image when the codec has a learned up-sampling, else the low-res one
        (the runtime then enlarges it: manifest ``reconstruct_pixels``)."""
        if self.cont.upsampler is not None:
            return self.cont.upsampler(guidance).clamp(0, 1)
        return self.cont.reconstruct(guidance).clamp(0, 1)


class PredictorGraph(nn.Module):
    """Sent indices + guidance → every position's code vector (``MaskedTokenPredictor.codes``)."""

    def __init__(self, predictor: MaskedTokenPredictor, soft: bool, codebook: torch.Tensor):
        super().__init__()
        self.predictor = predictor
        self.soft = soft
        # only a predictor trained without its own copy of the codebook needs it handed in
        self.codebook = None if predictor.cfg.code_dim else nn.Parameter(codebook, requires_grad=False)

    def forward(self, indices: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.predictor.codes(indices, visible, guidance, self.soft, self.codebook)


class PixelHeadGraph(nn.Module):
    """Code vectors + guidance → the pixel decoder's features after the stages the correction feeds."""

    def __init__(self, decoder: PixelDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, codes: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.decoder.head(codes, guidance)


class PixelTailGraph(nn.Module):
    """``PixelHeadGraph``'s features → the picture in [0, 1]."""

    def __init__(self, decoder: PixelDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return ((self.decoder.tail(features) + 1) / 2).clamp(0, 1)


class FusionGraph(nn.Module):
    """Both pictures in [0, 1] (the runtime's 8-bit pictures as floats) → the fused picture in [0, 1]."""

    def __init__(self, fusion: Fusion | HalfResolutionFusion):
        super().__init__()
        self.fusion = fusion

    def forward(self, pixels: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        return ((self.fusion(pixels * 2 - 1, continuous * 2 - 1) + 1) / 2).clamp(0, 1)


@dataclass
class GraphSpec:
    """A graph, its I/O names, dynamic axes and example inputs (batch ≥ 2 so it stays dynamic)."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    # weights the graph stores as int8 (export/int8_weights.py), already on the int8 grid
    int8_weights: list[torch.Tensor] = field(default_factory=list)


def compare_outputs(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far a graph output ``got`` is from the reference ``ref``: the share of equal values for
    integer outputs (indices), the largest absolute and relative error for float ones."""
    if ref.dtype.kind in "iub":
        return {"agreement": float(np.mean(ref == got))}
    err = float(np.abs(ref.astype(np.float64) - got).max())
    return {"max_abs": err, "max_rel": err / max(float(np.abs(ref).max()), 1e-12)}


def graph_specs(c: Components, tile: int = TILE) -> list[GraphSpec]:
    vq_cfg, cont_cfg = c.vq.cfg, c.cont.cfg
    cont = c.cont.without_rate_points()  # the gains travel in the manifest, not in any graph
    # the continuous picture's graph as faster operators, the same function (models/layers.py): transposed
    # convolutions as sub-pixel ones (int8-quantisable too), the up-sampling's last convolution before its
    # shuffle. A copy, so the other graphs are traced from the untouched modules. Not cont_synthesis: it
    # runs at ÷16 (≈ 0.1 s of an 8000×6000 decode to save), and its zero taps would add 0.5 MB to the model
    picture = copy.deepcopy(cont)
    subpixel_deconvs(picture)
    shuffled_convs(picture)
    g = tile // vq_cfg.factor
    gc = cont_cfg.channels
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vq_cfg.n_codes, (2, g, g), generator=gen)
    codes = c.codes(idx)
    guid = torch.randn(2, gc, g, g, generator=gen)
    low = tile // cont_cfg.downscale
    y_side = tile // cont_cfg.latent_stride
    spatial = {0: "batch", 2: "height", 3: "width"}
    specs = [
        GraphSpec("vq_encoder", VQEncoderGraph(c.vq), {"image": torch.rand(2, 3, tile, tile, generator=gen)},
                  ["indices"], {"image": {0: "batch"}, "indices": {0: "batch"}}),
        GraphSpec("vq_decoder", VQDecoderGraph(c.vq), {"codes": codes}, ["image"],
                  {"codes": spatial, "image": spatial}),
        GraphSpec("cont_analysis", ContAnalysisGraph(cont), {"image": torch.rand(2, 3, 2 * low, low, generator=gen)},
                  ["y"], {"image": spatial, "y": spatial}),
        GraphSpec("hyper_analysis", HyperAnalysisGraph(cont),
                  {"y": torch.randn(2, cont_cfg.latent, 2 * y_side, y_side, generator=gen)},
                  ["z"], {"y": spatial, "z": spatial}),
        GraphSpec("cont_synthesis", ContSynthesisGraph(cont),
                  {"y_hat": torch.randn(2, cont_cfg.latent, 2 * y_side, y_side, generator=gen)},
                  ["guidance"], {"y_hat": spatial, "guidance": spatial}),
        GraphSpec("cont_reconstruct", ContReconstructGraph(picture), {"guidance": guid}, ["image"],
                  {"guidance": spatial, "image": spatial}),
    ]
    if c.predictor is not None:
        vis = torch.rand(2, g, g, generator=gen) < 0.3
        specs.append(GraphSpec("predictor", PredictorGraph(c.predictor, c.soft_codes, c.codebook()),
                               {"indices": idx, "visible": vis, "guidance": guid}, ["codes"],
                               {"indices": {0: "batch"}, "visible": {0: "batch"}, "guidance": {0: "batch"},
                                "codes": {0: "batch"}},
                               [c.predictor.state_dict()[k] for k in linear_keys(c.predictor)]))
    if c.correction is not None:  # the pixel decoder as two graphs, head and tail (PixelDecoder.head)
        pd = c.pixel_decoder()
        with torch.no_grad():
            features = pd.head(codes, guid)
        specs.append(GraphSpec("pixel_head", PixelHeadGraph(pd), {"codes": codes, "guidance": guid}, ["features"],
                               {"codes": spatial, "guidance": spatial, "features": spatial}))
        specs.append(GraphSpec("pixel_tail", PixelTailGraph(pd), {"features": features}, ["image"],
                               {"features": spatial, "image": spatial}))
    if c.fusion is not None:
        pics = {k: torch.rand(2, 3, tile, tile, generator=gen) for k in ("pixels", "continuous")}
        specs.append(GraphSpec("fusion", FusionGraph(HalfResolutionFusion(c.fusion)), pics, ["image"],
                               {"pixels": spatial, "continuous": spatial, "image": spatial}))
    return specs


def real_inputs(c: Components, images: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Real tiles (and what the models make of them) as parity inputs."""
    tiles = np.stack([img[:TILE, :TILE] for img in images if min(img.shape[:2]) >= TILE])
    x = torch.from_numpy(tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with torch.no_grad():
        idx = c.vq.encode(x * 2 - 1)
        codes = c.codes(idx)
        low = torch.nn.functional.avg_pool2d(x, c.cont.cfg.downscale)
        y, _ = c.cont.analysis(low)
        g = c.cont.guidance(torch.round(y))
    real = {
        "vq_encoder": {"image": x.numpy()},
        "vq_decoder": {"codes": codes.numpy()},
        "cont_analysis": {"image": low.numpy()},
        "hyper_analysis": {"y": y.numpy()},
        "cont_synthesis": {"y_hat": torch.round(y).numpy()},
        "cont_reconstruct": {"guidance": g.numpy()},
    }
    vis = np.broadcast_to(np.indices(idx.shape[1:]).sum(0) % 2 == 0, idx.shape).copy()
    real["predictor"] = {"indices": idx.numpy(), "visible": vis, "guidance": g.numpy()}
    real["pixel_head"] = {"codes": codes.numpy(), "guidance": g.numpy()}
    if c.correction is not None:
        with torch.no_grad():
            real["pixel_tail"] = {"features": c.pixel_decoder().head(codes, g).numpy()}
    blurred = torch.nn.functional.interpolate(low, scale_factor=float(c.cont.cfg.downscale), mode="bilinear")
    real["fusion"] = {"pixels": x.numpy(), "continuous": blurred.numpy()}
    return real
