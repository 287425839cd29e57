"""Photo folder → one uint8 cache in RAM/disk → random crops (NumPy only, no torch).

Decoding ~1000 JPEGs per step would starve 2 CPU cores, so every image is decoded once and stored
in a flat memmap (≈1 GB for ``train/``), from which crops are cut."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from ..runtime.tiling import TILE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}


def data_root() -> Path:
    """``$HF_DATA`` if set, else ``../shared/data`` next to the repository (or the working dir)."""
    if env := os.environ.get("HF_DATA"):
        return Path(env)
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Area downsampling; the same operation the runtime uses for the continuous stream."""
    h, w = img.shape[:2]
    return cv2.resize(img, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def val_crops(n: int, whole_tiles_only: bool = False, size: int = TILE) -> list[np.ndarray]:
    """Centre crops of ``n`` images spread over ``val``: one ``size``² tile each, or (with
    ``whole_tiles_only``) the largest centred area that is a multiple of ``size`` on both sides."""
    out = []
    paths = list_images(data_root() / "val")
    for p in paths[:: max(1, len(paths) // n)][:n]:
        img = read_rgb(p)
        h, w = (img.shape[0] // size * size, img.shape[1] // size * size) if whole_tiles_only else (size, size)
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append(np.ascontiguousarray(img[y : y + h, x : x + w]))
    return out


class ImageCache:
    """All images of a folder, decoded once (optionally downscaled), in one flat uint8 array."""

    def __init__(self, folder: Path, cache_dir: Path, downscale_by: int = 1):
        paths = list_images(folder)
        key = hashlib.sha1(("|".join(p.name for p in paths) + f"/{downscale_by}").encode()).hexdigest()[:10]
        cache_dir.mkdir(parents=True, exist_ok=True)
        flat_path = cache_dir / f"{Path(folder).name}_{key}.u8"
        index_path = cache_dir / f"{Path(folder).name}_{key}.idx.npy"
        if not index_path.exists():
            self._build(paths, flat_path, index_path, downscale_by)
        self.index = np.load(index_path)  # rows: offset, h, w
        self.flat = np.memmap(flat_path, dtype=np.uint8, mode="r")

    @staticmethod
    def _build(paths: list[Path], flat_path: Path, index_path: Path, factor: int) -> None:
        rows, offset = [], 0
        tmp = flat_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for p in paths:
                img = read_rgb(p)
                if factor > 1:
                    img = downscale(img, factor)
                f.write(np.ascontiguousarray(img).tobytes())
                rows.append((offset, img.shape[0], img.shape[1]))
                offset += img.size
        tmp.rename(flat_path)
        np.save(index_path, np.array(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray:
        off, h, w = self.index[i]
        return np.asarray(self.flat[off : off + h * w * 3]).reshape(h, w, 3)

    def random_crops(self, rng: np.random.Generator, n: int, size: int) -> np.ndarray:
        """(n, size, size, 3) uint8 random crops with random horizontal flips."""
        out = np.empty((n, size, size, 3), np.uint8)
        for k in range(n):
            while True:
                i = int(rng.integers(len(self.index)))
                _, h, w = self.index[i]
                if h >= size and w >= size:
                    break
            y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
            img = self.image(i)
            crop = img[y : y + size, x : x + size]
            out[k] = crop[:, ::-1] if rng.random() < 0.5 else crop
        return out
