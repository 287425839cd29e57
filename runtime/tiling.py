"""Cutting an image into 256² tiles and putting decoded tiles back.

The image is padded to a multiple of 256 by replicating its edges (cheap to code: flat regions),
and indices whose 16×16 footprint lies wholly in the padding are never sent, so padding costs the
continuous stream a little and the discrete stream nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

TILE = 256
TOKEN = 16  # pixels per token side (VQ downsampling)


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int = TILE

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows * self.tile, self.cols * self.tile

    def position(self, t: int) -> tuple[int, int]:
        """Tile number (row-major) → top-left pixel (y, x)."""
        return (t // self.cols) * self.tile, (t % self.cols) * self.tile

    def valid_tokens(self, t: int, token: int = TOKEN) -> np.ndarray:
        """(g, g) bool: tokens whose footprint overlaps the real image (others are padding)."""
        y0, x0 = self.position(t)
        g = self.tile // token
        rows = y0 + np.arange(g) * token < self.height
        cols = x0 + np.arange(g) * token < self.width
        return rows[:, None] & cols[None, :]

    def valid_box(self, t: int) -> tuple[int, int]:
        """Height and width of the part of tile ``t`` inside the image."""
        y0, x0 = self.position(t)
        return min(self.tile, self.height - y0), min(self.tile, self.width - x0)


def pad(img: np.ndarray, grid: TileGrid) -> np.ndarray:
    ph, pw = grid.padded_shape
    if (ph, pw) == img.shape[:2]:
        return img
    return np.pad(img, ((0, ph - img.shape[0]), (0, pw - img.shape[1]), (0, 0)), mode="edge")


def batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def tile_stack(padded: np.ndarray, grid: TileGrid, ids: range) -> np.ndarray:
    """(len(ids), tile, tile, 3) view-copies of the requested tiles."""
    out = np.empty((len(ids), grid.tile, grid.tile, padded.shape[2]), padded.dtype)
    for k, t in enumerate(ids):
        y, x = grid.position(t)
        out[k] = padded[y : y + grid.tile, x : x + grid.tile]
    return out


def place(out: np.ndarray, grid: TileGrid, t: int, tile: np.ndarray) -> None:
    """Write the in-image part of a decoded tile into the output image."""
    y, x = grid.position(t)
    h, w = grid.valid_box(t)
    out[y : y + h, x : x + w] = tile[:h, :w]
