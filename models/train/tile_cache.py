"""What stages 2 and 3 learn from: the frozen stage-1 models' view of random training tiles.

For each tile, the VQ token map and the decoded continuous guidance (what the runtime's decoder will
have), and for stage 3 the tile itself. Computing them is the expensive part of those stages, so they
are computed once per pair of stage-1 checkpoints and kept in an ``.npz`` in the cache folder, named
by a hash of exactly what they depend on (``stage1_key``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...runtime.tiling import TILE
from .. import checkpoint
from ..data import ImageCache, data_root
from ..hyperprior import ContConfig, ContinuousCodec
from ..vq import VQAutoencoder, VQConfig
from .loop import Deadline, to_tensor


def load_frozen(vq_ckpt: Path, cont_ckpt: Path) -> tuple[VQAutoencoder, ContinuousCodec]:
    return (checkpoint.load_model(vq_ckpt, VQAutoencoder, VQConfig),
            checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig))


@torch.no_grad()
def guidance(cont: ContinuousCodec, x: torch.Tensor, rate: int | None = None) -> torch.Tensor:
    """What the decoder has of full-resolution images ``x`` in [-1, 1] from the continuous stream: the
    guidance decoded from rounded symbols, as the runtime decodes it, at rate point ``rate`` (None:
    the base point; a point's gains scale y and its mean before rounding, its inverse gains after)."""
    y, z = cont.analysis(cont.lowres(x))
    return cont.guidance(cont.decoded_y(y, torch.round(z), None if rate is None else cont.rate_gains(rate)))


@torch.no_grad()
def tokens_and_guidance(vq: VQAutoencoder, cont: ContinuousCodec, tiles_u8: np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decoder will have for these tiles: VQ indices and decoded continuous guidance (computed on
    the models' device, returned on the CPU)."""
    x = to_tensor(tiles_u8, next(vq.parameters()).device)
    return vq.encode(x).cpu(), guidance(cont, x).cpu()


def stage1_key(vq_ckpt: Path, cont_ckpt: Path) -> str:
    """A hash of exactly what the cached tokens and guidance depend on (VQ encoder and codebook,
    continuous codec), so a decoder-only fine-tune of the VQ model reuses the caches."""
    h = hashlib.sha1()
    vq_state, cont_state = (checkpoint.load(p)["model"] for p in (vq_ckpt, cont_ckpt))
    parts = [(k, v) for k, v in vq_state.items() if not k.startswith("decoder.") and k != "quantizer.usage"]
    parts += sorted((k, v) for k, v in cont_state.items() if not k.startswith("upsampler."))  # decoder-side only
    for k, v in parts:
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


@dataclass
class TileCache:
    tokens: torch.Tensor  # (N, g, g) int64 token maps
    guidance: torch.Tensor  # (N, C, g, g) float32 decoded continuous guidance
    tiles: np.ndarray | None  # (N, T, T, 3) uint8 training tiles, where the cache keeps them


def cache_path(cache_dir: Path, name: str, vq_ckpt: Path, cont_ckpt: Path, n: int) -> Path:
    return cache_dir / f"{name}_{stage1_key(vq_ckpt, cont_ckpt)}_{n}.npz"


def build(path: Path, vq: VQAutoencoder, cont: ContinuousCodec, n: int, cache_dir: Path, seed: int,
          keep_tiles: bool = False, deadline: Deadline | None = None, batch: int = 16) -> None:
    """``n`` random training tiles (crops drawn from ``seed``) through the frozen models, ``batch`` at a
    time. ``deadline``: a time-boxed run stops adding tiles at half its budget (at least one batch);
    such a run's cache lives in its own work folder, so the tile count in the file name is not relied on."""
    data = ImageCache(data_root() / "train", cache_dir)
    rng = np.random.default_rng(seed)
    tiles, toks, guid = [], [], []
    for start in tqdm(range(0, n, batch), desc=f"cache {path.name}"):
        if toks and deadline is not None and deadline.share_left() < 0.5:
            break
        crops = data.random_crops(rng, min(batch, n - start), TILE)
        idx, g = tokens_and_guidance(vq, cont, crops)
        tiles.append(crops)
        toks.append(idx.numpy().astype(np.int16))
        guid.append(g.numpy().astype(np.float16))
    arrays = {"tokens": np.concatenate(toks), "guidance": np.concatenate(guid)}
    np.savez(path, **arrays, **({"tiles": np.concatenate(tiles)} if keep_tiles else {}))


def load(path: Path) -> TileCache:
    with np.load(path) as f:
        return TileCache(torch.from_numpy(f["tokens"].astype(np.int64)),
                         torch.from_numpy(f["guidance"].astype(np.float32)), f["tiles"] if "tiles" in f else None)
