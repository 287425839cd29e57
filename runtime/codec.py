"""The codec: the HybridFlow procedure, step by step, on top of the exported graphs.

compress:   tiles → VQ indices → mask → ┐
            4×-down image → y, ẑ ───────┴→ one ANS stream → container
decompress: container → ẑ → (μ, σ) → ŷ → guidance g → per tile: sent indices + g → predictor →
            full indices → pixel decoder (VQ decoder + correction) → tiles → image

``Codec`` holds no per-call state, and onnxruntime sessions are safe to call from several threads,
so one ``Codec`` may serve concurrent ``compress``/``decompress`` calls (graph runs beyond
``model.MAX_CONCURRENT_RUNS`` wait for a slot, which bounds memory).

``progress(done, total)``, where given, is called between units of work: tiles for ``compress``,
pixel-decoder windows for ``decompress``. It may raise to abandon the call (a client that went away):
the exception propagates unchanged and nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import bitstream
from .bitstream import BitstreamError, Header
from .entropy import TERMINATOR_BITS, Decoder, Encoder
from .masking import SCHEDULES, schedule_code, schedule_name, sent_mask
from .model import Model
from .streams import StreamKind, stream_kind
from .tiling import TILE, TileGrid, batches, pad, tile_stack, windowed, windows

RECON_WINDOW = 64  # guidance cells per side of a continuous-only reconstruction window (1024 px)
RECON_MARGIN = 4
LATENT_WINDOW = 32  # y cells per side of an analysis/synthesis window (2048 px), so memory stays bounded
LATENT_MARGIN = 4  # y cells around each window: covers the transforms' receptive field
DECODE_WINDOW = 48  # tokens per side of a pixel-decoder window (768 px: a Kodak image is one window)
DECODE_MARGIN = 2  # tokens around each window for models whose manifest has no "decoder_margin" (≤ s7)


@dataclass
class Symbols:
    """One image's symbols, in the order of the procedure (see FORMAT.md for the decode order)."""

    header: Header
    indices: np.ndarray | None = None  # sent VQ indices, tile by tile
    z_hat: np.ndarray | None = None  # (C, h, w) integers
    y_residual: np.ndarray | None = None  # (M, 4h, 4w) integers, round(y − μ)
    y_scale: np.ndarray | None = None  # predicted scales (before the table lookup)


@dataclass
class StreamInfo:
    stream: str
    width: int
    height: int
    bytes: int
    header_bytes: int
    model_id: str
    schedules: dict[str, int]

    @property
    def bpp(self) -> float:
        return 8 * self.bytes / (self.width * self.height)


def _to_float(tiles_u8: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 in [0, 1] (what every graph takes)."""
    return np.ascontiguousarray(tiles_u8.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def _to_u8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] → (B, H, W, 3) uint8."""
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def check_image(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an (H, W, 3) uint8 RGB array")
    if (rgb.shape[0] == 0 or rgb.shape[1] == 0 or max(rgb.shape[:2]) > bitstream.MAX_SIDE
            or rgb.shape[0] * rgb.shape[1] > bitstream.MAX_PIXELS):
        raise ValueError(f"unsupported image size {rgb.shape[1]}×{rgb.shape[0]}")


Progress = Callable[[int, int], None]


class Codec:
    def __init__(self, model: Model, tile_batch: int = 1, correction: bool = True):
        if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
            raise ValueError(f"tile_batch must be an integer ≥ 1, got {tile_batch!r}")
        if not isinstance(correction, bool):
            raise ValueError(f"correction must be True or False, got {correction!r}")
        self.model = model
        self.tile_batch = tile_batch
        # False decodes hybrid streams with the plain VQ decoder: the stage-3 ablation of the benchmarks
        self.correction = correction
        self.downscale = int(model.manifest["downscale"])
        self.token_px = int(model.manifest["token_pixels"])
        self.y_stride = int(model.manifest["latent_stride"])  # full-res pixels per y cell
        self.grid_side = TILE // self.token_px
        # tokens of context each pixel-decoder window needs: the decoder's receptive field
        self.decode_margin = int(model.manifest.get("decoder_margin", DECODE_MARGIN))

    @classmethod
    def load(cls, model_dir: Path | str | None = None, provider: str = "auto", threads: int | None = None,
             optimise: bool = True, tile_batch: int = 1) -> Codec:
        """``model_dir=None`` loads the default model shipped inside the package. ``tile_batch``
        tiles go through each graph at once: on a CPU 1 is as fast as 4 and needs a third of the
        memory (measured); batches pay off on a GPU."""
        return cls(Model.load(None if model_dir is None else Path(model_dir), provider, threads, optimise), tile_batch)

    # ------------------------------------------------------------------------------- compress
    def compress(self, rgb: np.ndarray, mask: str = "auto", stream: str = "hybrid",
                 progress: Progress | None = None) -> bytes:
        return self.entropy_code(self.analyse(rgb, mask, stream, progress))

    def analyse(self, rgb: np.ndarray, mask: str = "auto", stream: str = "hybrid",
                progress: Progress | None = None) -> Symbols:
        """Everything the stream will carry, before entropy coding."""
        check_image(rgb)
        kind = stream_kind(stream)
        grid = TileGrid(rgb.shape[0], rgb.shape[1])
        padded = pad(rgb, grid)
        sym = Symbols(Header(stream, grid.width, grid.height, self.model.model_id, []))
        if kind.tokens:
            sym.header.schedules = self._choose_schedules(rgb, grid, mask, kind)
            sym.indices = self._sent_indices(padded, grid, sym.header.schedules, progress)
        elif progress:
            progress(grid.count, grid.count)  # the continuous analysis below is one cheap pass
        if kind.continuous:
            y = windowed(lambda im: self.model.run("cont_analysis", image=im)[0], self._lowres(padded),
                         self.y_stride // self.downscale, 1, LATENT_WINDOW, LATENT_MARGIN)
            (z,) = self.model.run("hyper_analysis", y=y)
            radius = self.model.tables.z_radius
            sym.z_hat = np.clip(np.round(z[0]), -radius, radius)
            mean, sym.y_scale = self.model.hyper(sym.z_hat)
            radius = self.model.tables.y_radius
            sym.y_residual = np.clip(np.round(y[0].astype(np.float64) - mean), -radius, radius)
        return sym

    def entropy_code(self, sym: Symbols) -> bytes:
        """One ANS payload; padded with terminators when it is below the format's minimum per tile
        (only unusually flat or sparse images, see streams.StreamKind.min_payload_per_tile)."""
        terminators = 1
        while (short := bitstream.payload_shortfall(sym.header, words := self._payload(sym, terminators))) > 0:
            terminators += -(-8 * short // TERMINATOR_BITS)
        return bitstream.write(sym.header, words)

    def _payload(self, sym: Symbols, terminators: int) -> np.ndarray:
        enc = Encoder(self.model.tables, terminators)
        if sym.indices is not None:
            enc.push_indices(sym.indices)
        if sym.z_hat is not None:
            enc.push_y(sym.y_residual, sym.y_scale)
            enc.push_z(sym.z_hat)
        return enc.finish()

    def _lowres(self, padded: np.ndarray) -> np.ndarray:
        h, w = padded.shape[:2]
        small = cv2.resize(padded, (w // self.downscale, h // self.downscale), interpolation=cv2.INTER_AREA)
        return _to_float(small[None])

    def _choose_schedules(self, rgb: np.ndarray, grid: TileGrid, mask: str, kind: StreamKind) -> list[int]:
        if mask == "auto" and not kind.continuous:
            mask = "none"  # complexity-aware masking needs the continuous guidance
        if mask != "auto":
            code = schedule_code(mask)
            if mask != "none" and not self.model.has("predictor"):
                raise ValueError(f"model {self.model.name} has no token predictor: only --mask none works")
            return [code] * grid.count
        if not self.model.has("predictor"):
            return [schedule_code("none")] * grid.count
        cm = self.model.complexity
        codes = []
        for t in range(grid.count):
            codes.append(schedule_code(cm.schedule(rgb[grid.valid_region(t)])))
        return codes

    def _sent_positions(self, grid: TileGrid, t: int, code: int) -> np.ndarray:
        return sent_mask(schedule_name(code), self.grid_side) & grid.valid_tokens(t)

    def _sent_indices(self, padded: np.ndarray, grid: TileGrid, schedules: list[int],
                      progress: Progress | None = None) -> np.ndarray:
        """Indices of every tile's sent positions, tile after tile, raster order inside a tile."""
        todo = [t for t in range(grid.count) if self._sent_positions(grid, t, schedules[t]).any()]
        out = []
        for chunk in batches(len(todo), self.tile_batch):
            ids = [todo[k] for k in chunk]
            tiles = np.stack([tile_stack(padded, grid, range(t, t + 1))[0] for t in ids])
            (idx,) = self.model.run("vq_encoder", image=_to_float(tiles))
            out += [idx[k][self._sent_positions(grid, t, schedules[t])] for k, t in enumerate(ids)]
            if progress:
                progress(ids[-1] + 1, grid.count)
        if progress and not todo:
            progress(grid.count, grid.count)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # ----------------------------------------------------------------------------- decompress
    def read_header(self, data: bytes) -> tuple[Header, np.ndarray, int]:
        header, words, header_bytes = bitstream.read(data)
        if header.model_id != self.model.model_id:
            raise BitstreamError(f"stream was made by model {header.model_id.hex()}, but the loaded model is "
                                 f"{self.model.model_id.hex()} ({self.model.name}); load the matching model")
        self._check_plausible(header, words)
        return header, words, header_bytes

    def _check_plausible(self, header: Header, words: np.ndarray) -> None:
        """Refuse a header that declares more symbols than its payload could possibly hold: every
        symbol costs at least −log2 of its model's largest probability. This stops a forged size
        from making the decoder allocate or work for a huge image."""
        t, grid = self.model.tables, TileGrid(header.height, header.width)
        need = 0.0
        if header.kind.continuous:
            cells = grid.count * (TILE * TILE) // int(self.model.manifest["hyper_stride"]) ** 2
            need += cells * float(-np.log2(t.z_pmf.max(axis=1)).sum())
        if header.kind.tokens:
            sent = sum(int(self._sent_positions(grid, k, c).sum()) for k, c in enumerate(header.schedules))
            need += sent * float(-np.log2(t.index_prior.max() / t.index_prior.sum()))
        if 0.9 * need > 32 * len(words) + 64:
            raise BitstreamError("corrupt stream: payload too short for the declared image size")

    def decompress(self, data: bytes, progress: Progress | None = None) -> np.ndarray:
        header, words, _ = self.read_header(data)
        grid = TileGrid(header.height, header.width)
        dec = Decoder(self.model.tables, words)
        guidance = self._decode_continuous(dec, grid) if header.kind.continuous else None
        sent = []
        if header.kind.tokens:
            for t, code in enumerate(header.schedules):
                pos = self._sent_positions(grid, t, code)
                sent.append((pos, dec.pop_indices(int(pos.sum()))))
        dec.finish()
        if guidance is not None and not np.isfinite(guidance).all():
            raise BitstreamError("corrupt payload: continuous stream decodes to invalid values")
        out = np.empty((grid.height, grid.width, 3), np.uint8)
        if not header.kind.tokens:
            self._reconstruct_continuous(guidance, out)
        else:
            self._decode_tiles(header, grid, sent, guidance, out, progress)
        return out

    def _decode_continuous(self, dec: Decoder, grid: TileGrid) -> np.ndarray:
        ph, pw = grid.padded_shape
        m = self.model.manifest
        z_hat = dec.pop_z((int(m["hyper_channels"]), ph // m["hyper_stride"], pw // m["hyper_stride"]))
        mean, scale = self.model.hyper(z_hat)
        y_hat = (dec.pop_y(scale) + mean).astype(np.float32)[None]
        return windowed(lambda y: self.model.run("cont_synthesis", y_hat=y)[0], y_hat,
                        1, self.y_stride // self.token_px, LATENT_WINDOW, LATENT_MARGIN)

    def _decode_tiles(self, header: Header, grid: TileGrid, sent: list[tuple[np.ndarray, np.ndarray]],
                      guidance: np.ndarray | None, out: np.ndarray, progress: Callable[[int, int], None] | None
                      ) -> None:
        tokens = self._restore_tokens(grid, sent, guidance)
        self._decode_pixels(header, grid, tokens, guidance, out, progress)

    def _tile_guidance(self, guidance: np.ndarray | None, grid: TileGrid, tiles: range) -> np.ndarray:
        g = self.grid_side
        if guidance is None:  # vq stream: the predictor runs with its "no guidance" input (zeros)
            return np.zeros((len(tiles), int(self.model.manifest["guidance_channels"]), g, g), np.float32)
        return np.stack([guidance[0, :, y // self.token_px : y // self.token_px + g,
                                  x // self.token_px : x // self.token_px + g]
                         for y, x in (grid.position(t) for t in tiles)])

    def _restore_tokens(self, grid: TileGrid, sent: list[tuple[np.ndarray, np.ndarray]],
                        guidance: np.ndarray | None) -> np.ndarray:
        """Pass 1: every tile's full index map (sent indices + predictor), as one token image."""
        g = self.grid_side
        tokens = np.zeros((grid.rows * g, grid.cols * g), np.int64)
        for chunk in batches(grid.count, self.tile_batch):
            idx = np.zeros((len(chunk), g, g), np.int64)
            visible = np.zeros((len(chunk), g, g), bool)
            for k, t in enumerate(chunk):
                pos, values = sent[t]
                idx[k][pos] = values
                visible[k] = pos
            valid = np.stack([grid.valid_tokens(t) for t in chunk])
            if (valid & ~visible).any():
                (idx,) = self.model.run("predictor", indices=idx, visible=visible,
                                        guidance=self._tile_guidance(guidance, grid, chunk))
            for k, t in enumerate(chunk):
                y, x = (v // self.token_px for v in grid.position(t))
                tokens[y : y + g, x : x + g] = idx[k]
        return tokens

    def _decode_pixels(self, header: Header, grid: TileGrid, tokens: np.ndarray, guidance: np.ndarray | None,
                       out: np.ndarray, progress: Progress | None) -> None:
        """Pass 2: the token image (only the tokens that touch the picture) decoded in large windows,
        each with a margin of at least the decoder's receptive field. With a position-wise decoder
        this equals decoding the whole token image in one call: no seams by construction."""
        px = self.token_px
        rows, cols = -(-grid.height // px), -(-grid.width // px)
        tok = tokens[:rows, :cols]
        # the correction network needs the guidance; --stream vq (no guidance) uses the plain VQ decoder
        fused = header.kind.continuous and self.correction and self.model.has("pixel_decoder")
        wins = windows(rows, cols, DECODE_WINDOW, self.decode_margin)
        for k, win in enumerate(wins):
            idx = np.ascontiguousarray(tok[win.read()])[None]
            if fused:
                g = np.ascontiguousarray(guidance[(0, slice(None), *win.read())])[None]
                (rgb,) = self.model.run("pixel_decoder", indices=idx, guidance=g)
            else:
                (rgb,) = self.model.run("vq_decoder", indices=idx)
            win.paste(out, _to_u8(rgb)[0], px)
            if progress:
                progress(k + 1, len(wins))

    def _reconstruct_continuous(self, guidance: np.ndarray, out: np.ndarray) -> None:
        """Low-res reconstruction upsampled ×4, in overlapping windows so memory stays bounded."""
        per_cell = TILE // self.grid_side  # full-resolution pixels per guidance cell
        gh, gw = guidance.shape[2:]
        for win in windows(gh, gw, RECON_WINDOW, RECON_MARGIN):
            (low,) = self.model.run("cont_reconstruct", guidance=np.ascontiguousarray(guidance[(0, slice(None),
                                                                                                 *win.read())])[None])
            ry, rx = win.read(per_cell)
            up = cv2.resize(_to_u8(low)[0], (rx.stop - rx.start, ry.stop - ry.start), interpolation=cv2.INTER_CUBIC)
            win.paste(out, up, per_cell)

    # ------------------------------------------------------------------------------------ info
    def info(self, data: bytes) -> StreamInfo:
        header, _, header_bytes = bitstream.read(data)
        counts = {name: header.schedules.count(code) for code, name in enumerate(SCHEDULES)}
        return StreamInfo(header.stream, header.width, header.height, len(data), header_bytes,
                          header.model_id.hex(), {k: v for k, v in counts.items() if v})
