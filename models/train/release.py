"""Assemble the release bundle from stage checkpoints, measuring the training-set statistics the
runtime needs: the static prior of the codeword indices, the complexity normalisation, and the
``auto`` mode's low threshold (calibrated to a rate saving, see ``sparse_share``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...runtime import metrics
from ...runtime.complexity import ComplexityModel
from ...runtime.masking import GRID, sent_mask
from ...runtime.tiling import TILE
from .. import checkpoint
from ..bundle import Components, components_from_payload, load_bundle, save_bundle
from ..correction import CorrectionNet
from ..data import ImageCache, data_root
from ..fusion import Fusion, FusionConfig
from ..hyperprior import ContConfig, ContinuousCodec
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder, VQConfig
from .loop import to_tensor


def training_tiles(cache_dir: Path, n: int, seed: int = 1234) -> np.ndarray:
    data = ImageCache(data_root() / "train", cache_dir)
    return data.random_crops(np.random.default_rng(seed), n, TILE)


@torch.no_grad()
def index_counts(vq: VQAutoencoder, tiles: np.ndarray, batch: int = 16) -> np.ndarray:
    counts = np.zeros(vq.cfg.n_codes, np.int64)
    for s in tqdm(range(0, len(tiles), batch), desc="index prior"):
        idx = vq.encode(to_tensor(tiles[s : s + batch]))
        counts += np.bincount(idx.flatten().numpy(), minlength=vq.cfg.n_codes)
    return counts


@torch.no_grad()
def continuous_bits(cont: ContinuousCodec, tiles: np.ndarray, batch: int = 32) -> float:
    """Mean bits per tile of the continuous stream, from the model's own likelihoods."""
    cont.eval()
    bits = 0.0
    for s in range(0, len(tiles), batch):
        out = cont(cont.lowres(to_tensor(tiles[s : s + batch])))
        bits += float(-(out["lik_y"].log2().sum() + out["lik_z"].log2().sum()))
    return bits / len(tiles)


def as_shipped(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the weights a release will hold: fp16, and for the continuous codec its integer
    networks on their grids (export/grids.py). Why: the statistics ``make_bundle`` measures must be
    those of the shipped networks, so that a bundle made again from ``hf-train unbundle``'s parts
    measures the same and exports to the same model id (s27, bundled from fp32 parts, and its rebuild from
    its own parts differed in the index prior and in the 6th digit of the ``auto`` threshold)."""
    from ...export.grids import round_integer_networks

    state = checkpoint.float_state(checkpoint.half_state(model.state_dict()))
    if isinstance(model, ContinuousCodec):
        round_integer_networks(state, model)
    model.load_state_dict(state)
    return model


def sparse_share(saving: float, counts: np.ndarray, cont_bits: float, grid: int = GRID) -> float:
    """Share of tiles ``auto`` must send at 1_9 to spend ``saving`` fewer bits than uniform 1_4.

    Rate model per tile (``grid`` tokens a side): continuous bits + sent indices × the index prior's
    entropy (the indices are coded with that static prior). The method's thresholds put the paper's
    operating point at a 12.5 % saving; our score's scale puts far fewer tiles below 0.24
    (runtime/complexity.py)."""
    h = float(np.log2(metrics.perplexity(counts)))  # bits per index
    bits = {name: cont_bits + int(sent_mask(name, grid).sum()) * h for name in ("1_4", "1_9")}
    return float(np.clip(saving * bits["1_4"] / (bits["1_4"] - bits["1_9"]), 0.0, 1.0))


def load_correction(ckpt: Path, vq: VQAutoencoder, cont: ContinuousCodec) -> tuple[CorrectionNet, bool]:
    """A stage-3 checkpoint's correction network for ``vq`` and ``cont``, and whether the predictor must
    hand it expected codes (``soft_codes``): it reads what it was trained on, so its training config decides."""
    ck = checkpoint.load(ckpt)
    soft_codes = bool((ck.get("train_config") or {}).get("soft_codes", False))
    return CorrectionNet.from_state(vq.cfg, cont.cfg.channels, ck["model"]), soft_codes


def make_bundle(out: Path, vq_ckpt: Path, cont_ckpt: Path, predictor_ckpt: Path | None,
                correction_ckpt: Path | None, name: str, cache_dir: Path, n_tiles: int = 600,
                auto_saving: float = 0.125, fusion_ckpt: Path | None = None,
                fusion_lowpass: float | None = None) -> Components:
    """``auto_saving`` > 0 calibrates the ``auto`` mode's low threshold to that rate saving against
    uniform 1_4 on the training tiles; 0 keeps the method's literal 0.24. ``fusion_lowpass`` sets the
    fusion's low-frequency anchor σ (models/fusion.py; None: the checkpoint's): a decode-time choice
    with no weights, made on val for a release."""
    if fusion_lowpass is not None and not fusion_ckpt:
        raise ValueError("a low-frequency anchor σ needs a fusion checkpoint (--fusion)")
    vq = as_shipped(checkpoint.load_model(vq_ckpt, VQAutoencoder, VQConfig))
    cont = as_shipped(checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig))
    predictor = None
    if predictor_ckpt:
        predictor = checkpoint.load_model(predictor_ckpt, MaskedTokenPredictor, TransformerConfig)
    correction, soft_codes = load_correction(correction_ckpt, vq, cont) if correction_ckpt else (None, False)
    tiles = training_tiles(cache_dir, n_tiles)
    counts = index_counts(vq, tiles)
    share = (sparse_share(auto_saving, counts, continuous_bits(cont, tiles), TILE // vq.cfg.factor)
             if auto_saving > 0 else None)
    complexity = ComplexityModel.fit(list(tiles), sparse_share=share)
    fusion = checkpoint.load_model(fusion_ckpt, Fusion, FusionConfig) if fusion_ckpt else None
    if fusion is not None and fusion_lowpass is not None:
        fusion = Fusion.from_state(fusion.cfg, fusion.state_dict(), lowpass_sigma=fusion_lowpass)
    c = Components(vq, cont, predictor, correction, complexity, counts, name, random_init=False, fusion=fusion,
                   soft_codes=soft_codes)
    save_bundle(out, c)
    return c


def derived_payload(model_dir: Path) -> dict:
    """The bundle payload a model directory was exported from (see export/bundle_index.py)."""
    from ...export.bundle_index import derive

    return derive(model_dir)


def rebuild_bundle(model_dir: Path, out: Path) -> None:
    checkpoint.save(out, **derived_payload(model_dir))


def open_bundle(path: Path) -> Components:
    """A bundle file, or the bundle a model directory was exported from."""
    path = Path(path)
    return components_from_payload(derived_payload(path), path) if path.is_dir() else load_bundle(path)


def split_bundle(bundle: Path, out: Path) -> list[Path]:
    """Stage checkpoints (the format ``hf-train`` stages read) rebuilt from a release bundle or a model
    directory."""
    c = open_bundle(bundle)
    parts = {"vq": (c.vq, c.vq.cfg), "cont": (c.cont, c.cont.cfg)}
    if c.predictor is not None:
        parts["predictor"] = (c.predictor, c.predictor.cfg)
    if c.correction is not None:
        parts["correction"] = (c.correction, None)
    if c.fusion is not None:
        parts["fusion"] = (c.fusion, c.fusion.cfg)
    written = []
    for kind, (model, cfg) in parts.items():
        path = Path(out) / f"{kind}.pt"
        extra = {"config": cfg} if cfg is not None else {}
        if kind == "correction":  # what make_bundle reads back: the codes the correction was trained on
            extra["train_config"] = {"soft_codes": c.soft_codes}
        checkpoint.save(path, model=model.state_dict(), kind=kind, step=0, from_bundle=str(bundle), **extra)
        written.append(path)
    return written
