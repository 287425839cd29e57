"""Assemble the release bundle from stage checkpoints, measuring the training-set statistics the
runtime needs: the static prior of the codeword indices and the complexity normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...runtime.complexity import ComplexityModel
from .. import checkpoint
from ..bundle import Components, load_bundle, save_bundle
from ..correction import CorrectionNet
from ..data import ImageCache, data_root
from ..hyperprior import ContConfig, ContinuousCodec
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder, VQConfig
from .loop import to_tensor


def training_tiles(cache_dir: Path, n: int, seed: int = 1234) -> np.ndarray:
    data = ImageCache(data_root() / "train", cache_dir)
    return data.random_crops(np.random.default_rng(seed), n, 256)


@torch.no_grad()
def index_counts(vq: VQAutoencoder, tiles: np.ndarray, batch: int = 16) -> np.ndarray:
    counts = np.zeros(vq.cfg.n_codes, np.int64)
    for s in tqdm(range(0, len(tiles), batch), desc="index prior"):
        idx = vq.encode(to_tensor(tiles[s : s + batch]))
        counts += np.bincount(idx.flatten().numpy(), minlength=vq.cfg.n_codes)
    return counts


def make_bundle(out: Path, vq_ckpt: Path, cont_ckpt: Path, predictor_ckpt: Path | None,
                correction_ckpt: Path | None, name: str, cache_dir: Path, n_tiles: int = 600) -> Components:
    vq = checkpoint.load_model(vq_ckpt, VQAutoencoder, VQConfig)
    cont = checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig)
    predictor = None
    if predictor_ckpt:
        predictor = checkpoint.load_model(predictor_ckpt, MaskedTokenPredictor, TransformerConfig)
    correction = None
    if correction_ckpt:
        correction = CorrectionNet(vq.cfg, cont.cfg.channels)
        correction.load_state_dict(checkpoint.load(correction_ckpt)["model"])
    tiles = training_tiles(cache_dir, n_tiles)
    counts = index_counts(vq, tiles)
    complexity = ComplexityModel.fit(list(tiles))
    c = Components(vq, cont, predictor, correction, complexity, counts, name, random_init=False)
    save_bundle(out, c)
    return c


def split_bundle(bundle: Path, out: Path) -> list[Path]:
    """Stage checkpoints (the format ``hf-train`` stages read) rebuilt from a release bundle."""
    c = load_bundle(bundle)
    parts = {"vq": (c.vq, c.vq.cfg), "cont": (c.cont, c.cont.cfg)}
    if c.predictor is not None:
        parts["predictor"] = (c.predictor, c.predictor.cfg)
    if c.correction is not None:
        parts["correction"] = (c.correction, None)
    written = []
    for kind, (model, cfg) in parts.items():
        path = Path(out) / f"{kind}.pt"
        extra = {"config": cfg} if cfg is not None else {}
        checkpoint.save(path, model=model.state_dict(), kind=kind, step=0, from_bundle=str(bundle), **extra)
        written.append(path)
    return written
