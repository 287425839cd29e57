"""``hf-train pack``: a small, deterministic training pack that travels to a GPU machine with the tree.

A GPU window gets a copy of the working tree of at most 64 MiB and no network, so the training data
and the perceptual-loss weights have to travel with it. The pack holds random crops of
``../shared/data/train`` as high-quality WebP (≈ 32 KiB per 384² crop at quality 90), filled up to
``--mib`` in a seeded order, plus a validation part cut from images that no training crop comes
from, plus the LPIPS-VGG weights of only the first VGG blocks (the full fp16 file is 29 MB; three
blocks are 3.5 MB and are what the training loss uses) and LPIPS-Alex in fp16 (4.9 MB, the
validation yardstick; its fp32 file is 9.9 MB).

Its layout is a data root: ``train/`` and ``val/`` (what ``ImageCache`` and ``val_crops`` read
when ``HF_DATA`` points at it) and ``lpips/`` (for ``HF_LPIPS_WEIGHTS``), plus ``pack.json``."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...runtime.tiling import TILE
from ..data import ImageCache, data_root
from .options import parse

MIB = 1 << 20


@dataclass
class PackConfig:
    """Build a training pack (see models/train/pack.py)."""

    out: str = field(metadata={"help": "pack folder to write (replaced if it exists)"})
    seed: int = field(default=0, metadata={"help": "crop order and positions, and which images are held back"})
    mib: float = field(default=24.0, metadata={"help": "total pack size (images + weights) in MiB"})
    crop: int = field(default=384, metadata={"help": "training crop size (stages cut their crops and tiles from "
                                                     "it)"})
    val_crops: int = field(default=24, metadata={"help": "tile-sized validation crops, from held-back images"})
    val_share: float = field(default=0.05, metadata={"help": "share of the training images held back"})
    quality: int = field(default=90, metadata={"help": "WebP quality"})
    vgg_blocks: int = field(default=3, metadata={"help": "VGG blocks whose weights travel (LPIPS-VGG taps; 0: none)"})
    alex: bool = field(default=True, metadata={"help": "LPIPS-Alex weights (fp16) for validation"})
    cache_dir: str = field(default=".cache/hybridflow", metadata={"help": "decoded-image cache of train/"})


def _encode(crop: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".webp", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError("WebP encoding failed")
    return buf.tobytes()


def _random_crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    y, x = (int(rng.integers(d - size + 1)) for d in img.shape[:2])
    return img[y : y + size, x : x + size]


def write_lpips(folder: Path, vgg_blocks: int, alex: bool) -> int:
    """LPIPS weights in fp16 (``LPIPS`` casts them to fp32 on load): the VGG features of the first
    ``vgg_blocks`` blocks (what ``LPIPS("vgg", layers=vgg_blocks)`` loads), AlexNet's if ``alex``,
    and their linear heads. Returns the bytes written."""
    import torch

    from ..lpips import ALEX, VGG, weights_dir

    src = weights_dir()
    folder.mkdir()
    for net, layers in ((VGG, vgg_blocks), (ALEX, len(ALEX.taps) if alex else 0)):
        if not layers:
            continue
        convs = [i for i in net.convs if i <= net.taps[layers - 1]]
        keep = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
        feats = torch.load(src / net.features_file, map_location="cpu", weights_only=True)
        torch.save({k: v.half() for k, v in feats.items() if k in keep}, folder / net.features_file)
        shutil.copyfile(src / net.heads_file, folder / net.heads_file)
    return sum(p.stat().st_size for p in folder.iterdir())


def build(cfg: PackConfig) -> dict:
    out = Path(cfg.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    budget = int(cfg.mib * MIB)
    used = write_lpips(tmp / "lpips", cfg.vgg_blocks, cfg.alex) if cfg.vgg_blocks or cfg.alex else 0
    data = ImageCache(data_root() / "train", Path(cfg.cache_dir))
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(data))
    n_val = max(1, round(cfg.val_share * len(data)))
    held, kept = order[:n_val], order[n_val:]
    counts = {"val": 0, "train": 0}

    def put(part: str, crop: np.ndarray) -> bool:
        nonlocal used
        blob = _encode(crop, cfg.quality)
        if used + len(blob) > budget:
            return False
        (tmp / part).mkdir(exist_ok=True)
        (tmp / part / f"{counts[part]:05d}.webp").write_bytes(blob)
        used += len(blob)
        counts[part] += 1
        return True

    for i in held:
        img = data.image(int(i))
        if counts["val"] < cfg.val_crops and min(img.shape[:2]) >= TILE:
            if not put("val", _random_crop(rng, img, TILE)):
                break
    big = [int(i) for i in kept if min(data.index[i][1:]) >= cfg.crop]
    if not big:
        raise ValueError(f"no training image is at least {cfg.crop} px on each side")
    full = False
    while not full:  # passes over the images in a fresh seeded order, one crop per image per pass
        for i in rng.permutation(big):
            if not put("train", _random_crop(rng, data.image(int(i)), cfg.crop)):
                full = True
                break
    summary = {"config": asdict(cfg), "source": str(data_root() / "train"), "images_held_back": n_val,
               "train_crops": counts["train"], "val_crops": counts["val"], "bytes": used}
    (tmp / "pack.json").write_text(json.dumps(summary, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return summary


def main(argv: list[str] | None = None) -> None:
    summary = build(parse(PackConfig, argv, "hf-train pack"))
    print(f"wrote {summary['config']['out']}: {summary['train_crops']} train + {summary['val_crops']} val crops, "
          f"{summary['bytes'] / MIB:.2f} MiB with the weights")


if __name__ == "__main__":
    main(sys.argv[1:])
