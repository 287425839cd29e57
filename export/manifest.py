"""What the runtime needs besides the graphs: entropy tables, complexity statistics, and the model id."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.bundle import Components
from ..models.entropy_models import scale_table
from ..models.vq import Decoder
from ..runtime.bitstream import FORMAT_VERSION
from ..runtime.fixedpoint import IntegerContext, IntegerConvs, IntegerHyperSynthesis
from ..runtime.masking import SCHEDULES
from ..runtime.model import FORMAT_WITHOUT_CONTEXT, MODEL_FORMAT_VERSION
from ..runtime.rates import GAIN_BITS
from ..runtime.tiling import TILE, Geometry
from .grids import integer_layer_groups

Z_RADIUS = 32
Y_RADIUS = 511  # residuals of the top rate points reach ±260 on edge-padded borders (session 20): never clipped
HYPER_FILE = "hyper_synthesis.npz"
CONTEXT_FILE = "channel_context.npz"
CODEBOOK_FILE = "codebook.npy"


def entropy_tables(c: Components) -> dict[str, Any]:
    counts = np.asarray(c.index_counts, np.float64) + 0.5
    return {
        "z_pmf": c.cont.prior.pmf_table(Z_RADIUS).tolist(),  # fixed point: the same on every CPU
        "scale_table": scale_table().tolist(),
        "y_radius": Y_RADIUS,
        "index_prior": np.round(counts / counts.sum(), 9).tolist(),
    }


def rate_points(c: Components) -> dict[str, Any]:
    """The continuous codec's rate points (runtime/rates.py); nothing for a model with one point, whose
    manifest then reads exactly as before rate points existed."""
    if c.cont.cfg.rate_points == 1:
        return {}
    points = [{"gain": [int(v) / (1 << GAIN_BITS) for v in gain], "inv_gain": [int(v) / (1 << GAIN_BITS) for v in inv]}
              for gain, inv in zip(c.cont.rate_gain.tolist(), c.cont.rate_inv_gain.tolist())]
    return {"rate_points": points, "base_rate": c.cont.cfg.base_rate}


def _float_layers(layers: list[torch.nn.Conv2d]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) of convolutions, as the integer networks' ``quantise`` takes them."""
    return [lay.weight.detach().numpy() for lay in layers], [lay.bias.detach().numpy() for lay in layers]


def integer_hyper(c: Components) -> IntegerHyperSynthesis:
    return IntegerHyperSynthesis.quantise(*_float_layers(integer_layer_groups(c.cont)[0]))


def integer_context(c: Components) -> IntegerContext | None:
    slices = integer_layer_groups(c.cont)[1:]
    return IntegerContext.quantise([_float_layers(group) for group in slices]) if slices else None


def build(c: Components, graphs: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    if c.cont.cfg.guidance_stride != c.vq.cfg.factor:
        raise ValueError(f"the guidance cell ({c.cont.cfg.guidance_stride} px) is not the VQ token "
                         f"({c.vq.cfg.factor} px): the decoders need them aligned")
    hyper = integer_hyper(c)
    hyper.save(out / HYPER_FILE)
    context = integer_context(c)
    if context is not None:
        context.save(out / CONTEXT_FILE)
    np.save(out / CODEBOOK_FILE, c.codebook().numpy().astype(np.float32))
    manifest: dict[str, Any] = {
        "format_version": MODEL_FORMAT_VERSION if context is not None else FORMAT_WITHOUT_CONTEXT,
        "bitstream_version": FORMAT_VERSION,
        "name": c.name,
        "random_init": c.random_init,
        "tile": TILE,
        "token_pixels": c.vq.cfg.factor,
        "decoder_norm": c.vq.cfg.decoder_norm,
        # tokens of context a pixel-decoder window needs (its receptive field): the runtime's margin
        "decoder_margin": math.ceil(Decoder.receptive_radius(c.vq.cfg)),
        # the same for the pixel decoder's two graphs (PixelDecoder.head/tail), and the head's feature
        # cells per token
        **(dict(zip(("head_margin", "tail_margin"), map(math.ceil, Decoder.radii(c.vq.cfg, c.correction.stages))),
                head_cells=2**c.correction.stages) if c.correction is not None else {}),
        "n_codes": c.vq.cfg.n_codes,
        "downscale": c.cont.cfg.downscale,
        "latent_channels": c.cont.cfg.latent,
        "hyper_channels": c.cont.cfg.hyper,
        "latent_stride": c.cont.cfg.latent_stride,  # full-res pixels per y cell
        "hyper_stride": c.cont.cfg.hyper_stride,  # full-res pixels per z cell
        "guidance_channels": c.cont.cfg.channels,
        # a learned up-sampling makes cont_reconstruct full-resolution (without one, the runtime enlarges
        # its low-res output ×downscale), and its windows need the receptive field in guidance cells
        **({"reconstruct_pixels": 1, "reconstruct_margin": math.ceil(c.cont.upsampler.receptive_radius())}
           if c.cont.upsampler is not None else {}),
        # the fusion of a hybrid decode's two pictures, and its windows' margin in tokens (receptive field)
        **({"fusion_margin": math.ceil(c.fusion.receptive_radius() / c.vq.cfg.factor)}
           if c.fusion is not None else {}),
        "schedules": list(SCHEDULES),
        "graphs": graphs,
        "hyper_synthesis": HYPER_FILE,
        **({"channel_context": CONTEXT_FILE} if context is not None else {}),
        "codebook": CODEBOOK_FILE,
        "entropy": entropy_tables(c),
        **rate_points(c),
        "complexity": {
            "lo": c.complexity.lo, "hi": c.complexity.hi,
            "low_threshold": c.complexity.low_threshold, "high_threshold": c.complexity.high_threshold,
            "sparse_share": c.complexity.sparse_share,
        },
    }
    Geometry.from_manifest(manifest)  # the sizes fit together (what the runtime checks on load)
    manifest["model_id"] = model_id(manifest, out)
    return manifest


def integer_networks(manifest: dict[str, Any], out: Path) -> dict[str, list[IntegerConvs]]:
    """Manifest key → the integer networks stored under it: the hyper synthesis, then the context's
    slices if the model has one (absent: the model id is computed as before contexts existed)."""
    hyper = IntegerHyperSynthesis.load(out / manifest["hyper_synthesis"])
    nets: dict[str, list[IntegerConvs]] = {"hyper_synthesis": [hyper]}
    if "channel_context" in manifest:
        nets["channel_context"] = IntegerContext.load(out / manifest["channel_context"]).nets
    return nets


def model_id(manifest: dict[str, Any], out: Path) -> str:
    """SHA-256 over everything that changes decoded pixels or parsing: graph bytes, integer hyper
    synthesis and context weights, tables and shapes (not the parity results or file names)."""
    h = hashlib.sha256()
    for name in sorted(manifest["graphs"]):
        h.update(name.encode())
        h.update((out / manifest["graphs"][name]["file"]).read_bytes())
    for net in (net for nets in integer_networks(manifest, out).values() for net in nets):
        for w, b in zip(net.weights, net.biases):
            h.update(w.astype(np.int64).tobytes())
            h.update(b.astype(np.int64).tobytes())
        h.update(str(net.act_bits * 100 + net.w_bits).encode())
    h.update(np.load(out / manifest["codebook"]).tobytes())
    static = {k: v for k, v in manifest.items() if k not in ("graphs", "parity", "model_id")}
    h.update(json.dumps(static, sort_keys=True).encode())
    return h.hexdigest()


def write(manifest: dict[str, Any], out: Path) -> None:
    path = out / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)
