"""The fusion (models/fusion.py), trained on what the exported model really decodes.

Its inputs are the two pictures the *runtime* draws from a hybrid stream: the pixel decoder's and
the continuous reconstruction, both 8-bit (``Codec.pictures``). So the training data is made by
compressing and decoding training crops with an exported model (``--model``, by default the shipped
one): random crops of ``train`` (up to ``crop_side`` px: real images are larger than one tile, and
the decoders see across tile borders), each at a random mask schedule (``MASKS``: mostly what
``auto`` picks) and, for a model with rate points, a share ``rate_share`` of them at a random one
(presets and rate control use them all), the rest at the base point. The cache is keyed by the model id. The rest of
the model is frozen: streams, predictor and decoders do not change; the run's checkpoint is the
fusion alone, which ``hf-train bundle --fusion`` adds to a release.

Loss: L1 + ``lpips_weight`` · LPIPS-VGG (the perceptual training loss; LPIPS-Alex is only measured).
Validation: whole ``val`` images through the same runtime, PSNR and LPIPS-Alex of the fused picture
next to the pixel decoder's (the number to beat) and the continuous reconstruction's."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime import metrics
from ...runtime.codec import Codec
from ...runtime.model import Model
from .. import checkpoint
from ..data import data_root, list_images, read_rgb
from ..fusion import Fusion, FusionConfig
from ..lpips import LPIPS
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor

# mask schedules of the training crops: ``auto`` (per tile 1_4/1_9/…) most often, every fixed one too
MASKS = ("auto",) * 4 + ("1_4",) * 3 + ("1_9",) * 2 + ("1_2", "1_16", "all", "none")
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]  # original, pixel decoder's picture, continuous picture


@dataclass
class FusionTrainConfig(RunConfig):
    model: str = field(default="", metadata={"help": "exported model whose decodes are the training data "
                                                     "(default: the shipped one)"})
    init: str = field(default="", metadata={"help": "fusion checkpoint to start from (e.g. the shipped one, "
                                                    "from `hf-train unbundle`) instead of zero", "must_exist": True})
    steps: int = field(default=3000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=8, metadata={"help": "crops per step"})
    crop: int = field(default=192, metadata={"help": "training crop side (even), cut from the cached decodes"})
    crops: int = field(default=700, metadata={"help": "training images compressed and decoded for the cache"})
    rate_share: float = field(default=0.5, metadata={"help": "share of those coded at a random rate point (the "
                                                            "rest at the base point, the default)"})
    crop_side: int = field(default=384, metadata={"help": "largest side of those (smaller images: whole)"})
    channels: int = field(default=32, metadata={"help": "fusion features at half resolution (FusionConfig)"})
    blocks: int = field(default=4, metadata={"help": "residual blocks at half resolution (FusionConfig); with --init "
                                                    "at most its count: its first blocks are kept"})
    lowpass_sigma: float = field(default=0.0, metadata={"help": "σ in pixels of the low-frequency anchor after the "
                                                               "network (FusionConfig); 0 = none; with --init it "
                                                               "replaces the checkpoint's"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    lr_decay: bool = field(default=True, metadata={"help": "LR falls linearly to 0 at --steps"})
    lpips_weight: float = field(default=1.0, metadata={"help": "weight of the LPIPS-VGG term next to L1"})
    val_every: int = field(default=250, metadata={"help": "score on val images every N steps"})
    val_images: int = field(default=24, metadata={"help": "whole val images scored"})


def decode_pair(codec: Codec, rgb: np.ndarray, mask: str, rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` through a hybrid stream: (pixel decoder's picture, continuous picture), unfused. The mask and
    rate point (None: the base point) are taken literally (``Codec.analyse``), not through ``Codec.compress``:
    under the default size cap (``ratecontrol.DEFAULT_MAX_BPP``) rate control re-codes an image whose ``auto``
    stream is above it, at worst as a continuous-only stream, which has no pixel decoder's picture."""
    pictures = codec.pictures(codec.entropy_code(codec.analyse(rgb, mask, "hybrid", rate=rate)))
    return pictures["tokens"], pictures["continuous"]


def train_triples(codec: Codec, n: int, side: int, seed: int, rate_share: float) -> list[Triple]:
    """``n`` random training crops with their two decodes (``codec`` unfused), a share ``rate_share`` at a
    random rate point. Deterministic given the model, the file list, ``seed`` and ``rate_share``."""
    files = list_images(data_root() / "train")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rgb = read_rgb(rng.choice(files))
        h, w = min(rgb.shape[0], side), min(rgb.shape[1], side)
        y, x = rng.randrange(rgb.shape[0] - h + 1), rng.randrange(rgb.shape[1] - w + 1)
        crop = np.ascontiguousarray(rgb[y : y + h, x : x + w])
        mask = rng.choice(MASKS)
        rate = rng.randrange(codec.model.rate_points) if rng.random() < rate_share else None
        out.append((crop, *decode_pair(codec, crop, mask, rate)))
        if i % 50 == 0:
            print(f"fusion cache: {i}/{n}", flush=True)
    return out


def save_cache(path: Path, triples: list[Triple]) -> None:
    """One .npz (``orig{i}``, ``tokens{i}``, ``continuous{i}``), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"{name}{i}": a for i, t in enumerate(triples)
                     for name, a in zip(("orig", "tokens", "continuous"), t)})
    tmp.replace(path)


def load_cache(path: Path) -> list[Triple]:
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("orig"))
        return [(z[f"orig{i}"], z[f"tokens{i}"], z[f"continuous{i}"]) for i in range(n)]


def val_triples(codec: Codec, n: int) -> list[Triple]:
    """``n`` whole images spread over ``val``, through a hybrid stream at ``auto`` and the base point (what
    users get by default, but for the size cap: ``decode_pair``)."""
    paths = list_images(data_root() / "val")
    out = []
    for p in paths[:: max(1, len(paths) // n)][:n]:
        rgb = read_rgb(p)
        out.append((rgb, *decode_pair(codec, rgb, "auto")))
    return out


def fuse_image(fusion: Fusion, pixels: np.ndarray, cont: np.ndarray) -> np.ndarray:
    """One whole picture through the fusion, padded to even sides as the runtime does."""
    h, w = pixels.shape[:2]
    even = ((0, h % 2), (0, w % 2), (0, 0))
    a, b = (to_tensor(np.pad(x, even, mode="edge")[None]) for x in (pixels, cont))
    out = fusion(a, b)[0, :, :h, :w].clamp(-1, 1)
    return ((out + 1) * 127.5).round().permute(1, 2, 0).byte().numpy()


@torch.no_grad()
def validate(fusion: Fusion, val: list[Triple], lpips_alex: LPIPS) -> dict[str, float]:
    fusion.eval()
    scores: dict[str, list[float]] = {"val_psnr": [], "val_lpips_alex": []}
    for orig, pixels, cont in val:
        fused = fuse_image(fusion, pixels, cont)
        scores["val_psnr"].append(metrics.psnr(orig, fused))
        scores["val_lpips_alex"].append(lpips_alex.distance(orig, fused))
    fusion.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


def baseline(val: list[Triple], lpips_alex: LPIPS) -> dict[str, float]:
    """What the fusion has to beat on the same images: each picture on its own."""
    out = {}
    for name, k in (("tokens", 1), ("continuous", 2)):
        out[f"val_psnr_{name}"] = float(np.mean([metrics.psnr(t[0], t[k]) for t in val]))
        out[f"val_lpips_alex_{name}"] = float(np.mean([lpips_alex.distance(t[0], t[k]) for t in val]))
    return out


def train(run_dir: Path, cfg: FusionTrainConfig, cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    if cfg.init:
        ck = checkpoint.load(Path(cfg.init))
        start = checkpoint.to_config(FusionConfig, ck["config"])
        if cfg.channels != start.channels:
            raise ValueError(f"--init {cfg.init} has {start.channels} channels, not --channels {cfg.channels}")
        fusion = Fusion.from_state(start, ck["model"], cfg.blocks, cfg.lowpass_sigma).train().to(cfg.device)
    else:
        fusion = Fusion(FusionConfig(cfg.channels, cfg.blocks, cfg.lowpass_sigma)).to(cfg.device)
    model_dir = Path(cfg.model) if cfg.model else None
    codec = Codec(Model.load(model_dir, threads=None), fusion=False)
    key = codec.model.manifest["model_id"][:10]
    cache = cache_dir / f"fusion_{key}_{cfg.crops}_{cfg.crop_side}_{cfg.seed}_r{cfg.rate_share:g}.npz"
    if not cache.exists():
        save_cache(cache, train_triples(codec, cfg.crops, cfg.crop_side, cfg.seed, cfg.rate_share))
    data = [t for t in load_cache(cache) if min(t[0].shape[:2]) >= cfg.crop]
    val_cache = cache_dir / f"fusion_val_{key}_{cfg.val_images}.npz"
    if not val_cache.exists():
        save_cache(val_cache, val_triples(codec, cfg.val_images))
    val = load_cache(val_cache)
    opt = torch.optim.Adam(fusion.parameters(), lr=cfg.lr)
    run.resume(model=fusion, opt=opt, averaged=("model",))
    lpips_vgg = LPIPS("vgg").to(cfg.device)
    lpips_alex = LPIPS("alex")

    def batch() -> tuple[torch.Tensor, ...]:
        rng, c = run.rng, cfg.crop
        picks = []
        for i in rng.integers(0, len(data), cfg.batch):
            orig, pixels, cont = data[i]
            y, x = rng.integers(0, orig.shape[0] - c + 1), rng.integers(0, orig.shape[1] - c + 1)
            y, x = y - y % 2, x - x % 2  # the runtime's windows start on even pixels
            crop = np.stack([a[y : y + c, x : x + c] for a in (orig, pixels, cont)])
            picks.append(crop[:, :, ::-1] if rng.random() < 0.5 else crop)
        return tuple(to_tensor(np.stack([p[k] for p in picks]), cfg.device) for k in range(3))

    run_fusion, run_lpips = compiled(cfg, fusion), compiled(cfg, lpips_vgg)

    def step() -> Numbers:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * run.lr_share(cfg.lr_decay, cfg.steps)
        target, pixels, cont = batch()
        with autocast(cfg):
            out = run_fusion(pixels, cont)
            lp = run_lpips(out, target).mean()
        l1 = F.l1_loss(out.float(), target)
        loss = l1 + cfg.lpips_weight * lp.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"l1": l1.item(), "lpips_vgg": lp.item()}

    def save() -> None:
        run.save(model=fusion.state_dict(), opt=opt.state_dict(), config=fusion.cfg, train_config=cfg, kind="fusion")

    if run.state.step == 0:
        run.state.log(baseline(val, lpips_alex) | validate(fusion, val, lpips_alex))
    run.loop("fusion", cfg.steps, step, save, lambda: validate(fusion, val, lpips_alex), cfg.val_every)
