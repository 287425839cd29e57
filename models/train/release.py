"""Assemble the release bundle from stage checkpoints, measuring the training-set statistics the
runtime needs: the static prior of the codeword indices and the complexity normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...runtime.complexity import ComplexityModel
from .. import checkpoint
from ..bundle import Components, save_bundle
from ..correction import CorrectionNet
from ..data import ImageCache, data_root
from ..hyperprior import ContConfig, ContinuousCodec
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder, VQConfig
from .loop import to_tensor


def _load(path: Path, cls: type, cfg_cls: type) -> torch.nn.Module:
    ck = checkpoint.load(path)
    model = cls(checkpoint.to_config(cfg_cls, ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


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
    vq = _load(vq_ckpt, VQAutoencoder, VQConfig)
    cont = _load(cont_ckpt, ContinuousCodec, ContConfig)
    predictor = _load(predictor_ckpt, MaskedTokenPredictor, TransformerConfig) if predictor_ckpt else None
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
