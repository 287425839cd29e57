"""Tile geometry: cutting an image into tiles and putting decoded pictures back together.

Who decides which size. The stream format fixes the tile (``TILE``², FORMAT.md): a header's schedule
table has one entry per tile, and it is read before the model that made the stream is known. Every
other size is the model's and comes from its manifest (``Geometry``, written by ``hf-export`` from the
model configs): pixels per token, the continuous stream's downscale and its latent strides. A model
whose tile differs from the format's is refused when it is loaded.

The image is padded to whole tiles by replicating its edges (cheap to code: flat regions), and
indices whose token footprint lies wholly in the padding are never sent, so padding costs the
continuous stream a little and the discrete stream nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masking import GRID

TILE = 256  # the stream format's tile side (FORMAT.md, stream format 2): its one definition


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

    def valid_tokens(self, t: int, grid: int = GRID) -> np.ndarray:
        """(grid, grid) bool: tokens (``grid`` per tile side) whose footprint overlaps the real image
        (the others are padding)."""
        y0, x0 = self.position(t)
        token = self.tile // grid
        rows = y0 + np.arange(grid) * token < self.height
        cols = x0 + np.arange(grid) * token < self.width
        return rows[:, None] & cols[None, :]

    def valid_box(self, t: int) -> tuple[int, int]:
        """Height and width of the part of tile ``t`` inside the image."""
        y0, x0 = self.position(t)
        return min(self.tile, self.height - y0), min(self.tile, self.width - x0)

    def valid_region(self, t: int) -> tuple[slice, slice]:
        """Index of the image pixels that tile ``t`` covers: ``img[grid.valid_region(t)]``."""
        (y, x), (h, w) = self.position(t), self.valid_box(t)
        return slice(y, y + h), slice(x, x + w)


@dataclass(frozen=True)
class Geometry:
    """A model's sizes in full-resolution pixels, as its manifest states them."""

    tile: int  # = TILE: the stream format's
    token_pixels: int  # one VQ token (and one guidance cell) covers token_pixels² pixels
    downscale: int  # full resolution → the continuous stream's low-res input
    latent_stride: int  # pixels per cell of the continuous latent y
    hyper_stride: int  # pixels per cell of the hyper-latent z

    FIELDS = ("tile", "token_pixels", "downscale", "latent_stride", "hyper_stride")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Geometry:
        """The manifest's geometry, or ValueError naming what does not fit together."""
        g = cls(*(int(manifest[k]) for k in cls.FIELDS))
        if min(getattr(g, k) for k in cls.FIELDS) <= 0:
            raise ValueError("tile, token_pixels, downscale and the strides must be positive")
        if g.tile != TILE:
            raise ValueError(f"tile {g.tile}: stream format 2 cuts images into {TILE}² tiles")
        for big, small in (("tile", "token_pixels"), ("tile", "hyper_stride"), ("hyper_stride", "latent_stride"),
                           ("latent_stride", "token_pixels"), ("latent_stride", "downscale")):
            if getattr(g, big) % getattr(g, small):
                raise ValueError(f"{big} {getattr(g, big)} is not a multiple of {small} {getattr(g, small)}")
        return g

    @property
    def grid(self) -> int:
        """Tokens per tile side."""
        return self.tile // self.token_pixels

    def tiles(self, height: int, width: int) -> TileGrid:
        return TileGrid(height, width, self.tile)


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


@dataclass(frozen=True)
class Window:
    """One window of a cell grid: it is responsible for the cells ``inner`` and reads ``outer``
    (``inner`` plus up to ``margin`` cells each side, clipped to the grid, so an edge window sees the
    same border a whole-grid call sees)."""

    inner: tuple[int, int, int, int]  # y0, y1, x0, x1 in cells
    outer: tuple[int, int, int, int]

    def read(self, per_cell: int = 1) -> tuple[slice, slice]:
        """Slices of an array with ``per_cell`` pixels per cell that the window reads."""
        y0, y1, x0, x1 = self.outer
        return slice(y0 * per_cell, y1 * per_cell), slice(x0 * per_cell, x1 * per_cell)

    def write(self, per_cell: int = 1) -> tuple[slice, slice]:
        """Slices of the whole output that the window fills."""
        y0, y1, x0, x1 = self.inner
        return slice(y0 * per_cell, y1 * per_cell), slice(x0 * per_cell, x1 * per_cell)

    def keep(self, per_cell: int = 1) -> tuple[slice, slice]:
        """Slices of the window's own output that go to ``write``."""
        (iy0, iy1, ix0, ix1), (oy0, _, ox0, _) = self.inner, self.outer
        return (slice((iy0 - oy0) * per_cell, (iy1 - oy0) * per_cell),
                slice((ix0 - ox0) * per_cell, (ix1 - ox0) * per_cell))

    def paste(self, out: np.ndarray, result: np.ndarray, per_cell: int) -> None:
        """Copy the kept part of the window's ``result`` (H, W, …) into ``out`` (the picture), clipped
        to ``out``'s size: the last row and column of cells may run past the picture's edge."""
        (ys, xs), (ky, kx) = self.write(per_cell), self.keep(per_cell)
        h, w = min(ys.stop, out.shape[0]) - ys.start, min(xs.stop, out.shape[1]) - xs.start
        if h > 0 and w > 0:
            out[ys.start : ys.start + h, xs.start : xs.start + w] = result[ky.start : ky.start + h,
                                                                          kx.start : kx.start + w]


def windows(h: int, w: int, window: int, margin: int) -> list[Window]:
    """Cover an h×w cell grid with ``window``² windows, each reading ``margin`` more cells around.
    A grid no larger in *area* than one window with its margins is one window: no overlap work at all
    (memory follows a window's area, not its shape: a 48×32-token Kodak picture is one pixel-decoder
    window of 32 + 2·6 tokens' area)."""
    if h * w <= (window + 2 * margin) ** 2:
        return [Window((0, h, 0, w), (0, h, 0, w))]
    out = []
    for y0 in range(0, h, window):
        for x0 in range(0, w, window):
            y1, x1 = min(h, y0 + window), min(w, x0 + window)
            out.append(Window((y0, y1, x0, x1),
                              (max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin))))
    return out


def paint(render: Callable[[Window], np.ndarray], out: np.ndarray, h: int, w: int, per_cell: int,
          window: int, margin: int, progress: Callable[[int, int], None] | None = None,
          in_place: bool = False, run_many: Callable[..., Iterable[np.ndarray]] = map) -> int:
    """Draw the picture ``out`` (H, W, …) from an h×w cell grid window by window: ``render(win)`` is
    the picture of the cells ``win.read()`` (``per_cell`` pixels per cell), of which the window's
    centre is kept. The one loop of every decoder that draws pixels (pixel decoder, continuous
    reconstruction, fusion); ``progress(done, total)`` after each window. Returns the number of windows.

    ``in_place``: ``render`` reads ``out`` itself (the fusion refines the picture already there), so every
    window must see it as it was before this pass. Rather than a copy of the whole picture (144 MB at
    48 MP), results wait one band (row of windows) before they are written: a window reads at most
    ``margin`` ≤ ``window`` cells into the band above, which is then still waiting, and none into older
    bands, which are written by then. So at most two bands' results are held.

    ``run_many(render, windows)``: the windows' results in order (``map``, or a thread pool's ``map`` that
    renders several at once: results are still written in order, and a window being rendered ahead
    reads only bands not yet written)."""
    if in_place and margin > window:
        raise ValueError(f"in-place painting needs margin ≤ window, got {margin} > {window}")
    wins = windows(h, w, window, margin)
    waiting: list[tuple[Window, np.ndarray]] = []  # in_place: (window, its result), oldest band first
    for k, (win, result) in enumerate(zip(wins, run_many(render, wins))):
        if in_place:
            # bands older than the one just above this window are read by no window still to come
            while waiting and waiting[0][0].inner[0] < win.inner[0] - window:
                done, kept = waiting.pop(0)
                done.paste(out, kept, per_cell)
            waiting.append((win, result))
        else:
            win.paste(out, result, per_cell)
        if progress:
            progress(k + 1, len(wins))
    for win, result in waiting:
        win.paste(out, result, per_cell)
    return len(wins)


def windowed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, in_per_cell: int, out_per_cell: int,
             window: int, margin: int) -> np.ndarray:
    """Run a fully convolutional ``fn`` over overlapping windows of ``x`` (1, C, H, W), keep each
    window's centre. Memory then grows with the window, not with the image; a margin at least the
    receptive field makes the stitched result equal to one whole-image call up to float rounding.

    Sizes are in *cells* of the coarser grid: ``fn`` maps ``in_per_cell`` input pixels per cell to
    ``out_per_cell`` output pixels per cell (analysis: latent stride ÷ downscale → 1; synthesis:
    1 → latent stride ÷ token pixels)."""
    i, o = in_per_cell, out_per_cell
    h, w = x.shape[2] // i, x.shape[3] // i
    if h <= window and w <= window:
        return fn(x)
    out: np.ndarray | None = None
    for win in windows(h, w, window, margin):
        res = fn(np.ascontiguousarray(x[(slice(None), slice(None), *win.read(i))]))
        if out is None:
            out = np.empty((x.shape[0], res.shape[1], h * o, w * o), res.dtype)
        out[(slice(None), slice(None), *win.write(o))] = res[(slice(None), slice(None), *win.keep(o))]
    assert out is not None
    return out
