"""Evaluate one codec configuration on a folder of images (default: Kodak), with the runtime.

Shared by the benchmark scripts: bpp from the real bytes, PSNR, MS-SSIM, sharpness ratio, seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from hybridflow.models.data import data_root, list_images
from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.imageio import read_image
from hybridflow.runtime.tiling import TILE, TileGrid, tile_stack


@dataclass
class Row:
    image: str
    bpp: float
    psnr: float
    ms_ssim: float
    sharpness: float
    sharpness_half: float
    encode_s: float
    decode_s: float


def whole_tiles(rgb: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(N, tile, tile, 3): the whole tiles of an image, row by row (a partial last row or column is left out)."""
    grid = TileGrid(rgb.shape[0] - rgb.shape[0] % tile, rgb.shape[1] - rgb.shape[1] % tile, tile)
    return tile_stack(rgb, grid, range(grid.count))


def load_images(folder: Path | None = None, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    folder = folder or data_root() / "kodak"
    paths = list_images(folder)[:limit]
    if not paths:
        raise SystemExit(f"no images in {folder} (set HF_DATA or pass a folder)")
    return [(p.name, read_image(p)[0]) for p in paths]


def round_trip(codec: Codec, rgb: np.ndarray, mask: str, stream: str, **kw: object
               ) -> tuple[bytes, np.ndarray, dict[str, float]]:
    """Compress and decompress one image (``kw``: more ``Codec.compress`` options, e.g. ``rate``):
    the stream, the decoded image, and what each step took."""
    t0 = time.perf_counter()
    data = codec.compress(rgb, mask=mask, stream=stream, **kw)
    t1 = time.perf_counter()
    rec = codec.decompress(data)
    return data, rec, {"encode_s": t1 - t0, "decode_s": time.perf_counter() - t1}


def evaluate(codec: Codec, images: list[tuple[str, np.ndarray]], mask: str, stream: str) -> list[Row]:
    rows = []
    for name, rgb in images:
        data, rec, seconds = round_trip(codec, rgb, mask, stream)
        rows.append(Row(name, **metrics.quality(rgb, len(data), rec), **seconds))
    return rows


def mean(rows: list[Row]) -> Row:
    numeric = [f.name for f in fields(Row) if f.name != "image"]
    return Row("mean", *(float(np.mean([getattr(r, f) for r in rows])) for f in numeric))


def table(results: dict[str, Row]) -> str:
    lines = ["| configuration | bpp | PSNR (dB) | MS-SSIM | sharpness | sharpness ½ | enc s | dec s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r.bpp:.4f} | {r.psnr:.2f} | {r.ms_ssim:.4f} | {r.sharpness:.2f} | "
                     f"{r.sharpness_half:.2f} | {r.encode_s:.2f} | {r.decode_s:.2f} |")
    return "\n".join(lines)
