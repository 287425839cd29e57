"""The codec: the HybridFlow procedure, step by step, on top of the exported graphs.

compress:   tiles → VQ indices → mask → ┐
            4×-down image → y, ẑ ───────┴→ one ANS stream → container
decompress: container → ẑ → (μ, σ) → ŷ → guidance g → per tile: sent indices + g → predictor →
            full indices → pixel decoder (VQ decoder + correction) → image ┐
            guidance g → continuous reconstruction ───────────────────────┴→ fusion → image

A stream carries up to two parts (``streams.StreamKind``): VQ tokens and the continuous latent.
Each part's whole procedure — analysis, entropy coding, size check, decoding, and the picture it
draws — is one class below (``TokenPart``, ``ContinuousPart``); ``Codec`` only strings together the
parts a kind carries. A hybrid stream draws with the pixel decoder (tokens guided by the continuous
part), then (models with a ``fusion`` graph) merges that picture with the continuous part's own
reconstruction; a continuous-only stream draws the continuous reconstruction.

``Codec`` holds no per-call state, and onnxruntime sessions are safe to call from several threads,
so one ``Codec`` may serve concurrent ``compress``/``decompress`` calls (graph runs beyond
``model.MAX_CONCURRENT_RUNS``, and window-decoder runs beyond ``model.MAX_CONCURRENT_WINDOWS``, wait
for a slot, which bounds memory).

``progress(done, total)``, where given, is called between units of work: tiles for ``compress``,
windows of the picture for ``decompress``. It may raise to abandon the call (a client that went
away): the exception propagates unchanged and nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from . import bitstream, slices
from .bitstream import BitstreamError, Header
from .entropy import TERMINATOR_BITS, Decoder, Encoder, EntropyError
from .fixedpoint import FixedPointError
from .masking import SCHEDULES, schedule_code, schedule_name, sent_mask
from .model import LANES, Model
from .streams import StreamKind, stream_kind
from .tiling import TileGrid, Window, batches, pad, paint, tile_stack, windowed, windows

ENCODER_GRAPHS = ("vq_encoder", "cont_analysis", "hyper_analysis")  # what compress runs; the rest decode
RECON_WINDOW = 64  # guidance cells per side of a continuous-only reconstruction window (1024 px)
RECON_MARGIN = 4
LATENT_WINDOW = 32  # y cells per side of an analysis/synthesis window (2048 px), so memory stays bounded
LATENT_MARGIN = 4  # y cells around each window: covers the transforms' receptive field
# tokens per side of a pixel-decoder window (512 px). With the shipped decoder's 6-token margins a window
# reads 44² tokens, whose activations take 385 MB of arena (48 + 12: 735 MB, which put an 8000×6000 decode
# at 1.29 GB); a Kodak picture (48×32 tokens, less area) is still one window (tiling.windows)
DECODE_WINDOW = 32
# The same for the pixel decoder's tail (models exported since session 17): its 2-token margins read 44²
# tokens, as many as a DECODE_WINDOW with the whole decoder's 6-token margins did (the same memory), and a
# Kodak picture is still one window
TAIL_WINDOW = 40
TAIL_LANE_WINDOW = 27  # a lane's (Model.lanes): 31² tokens read, half of 44²
FUSION_WINDOW = 48  # tokens per side of a fusion window: small features, so larger windows, less overlap
FUSION_LANE_WINDOW = 33  # a lane's: 37² tokens read, half of 52²
DECODE_MARGIN = 2  # tokens around each window for models whose manifest has no "decoder_margin" (≤ s7)


@dataclass
class Symbols:
    """One image's symbols, in the order of the procedure (see FORMAT.md for the decode order)."""

    header: Header
    indices: np.ndarray | None = None  # sent VQ indices, tile by tile
    z_hat: np.ndarray | None = None  # (C, h, w) integers
    y_residual: np.ndarray | None = None  # (M, 4h, 4w) integers, round(y·gain − μ·gain) (runtime/rates.py)
    y_scale: np.ndarray | None = None  # the coded std of each residual, a scale-table entry (runtime/slices.py)


@dataclass
class Latent:
    """The continuous analysis of one image (``ContinuousPart.latent``), before quantisation."""

    y: np.ndarray  # (M, 4h, 4w) float64
    z_hat: np.ndarray  # (C, h, w) integers
    mean: np.ndarray  # μ and σ of y from the integer hyper synthesis (bit-exact on both sides)
    scale: np.ndarray


@dataclass
class Decoded:
    """What a payload decodes to before any pixel is drawn; each part fills what its stream carries."""

    y_hat: np.ndarray | None = None  # (1, M, 4h, 4w) the continuous latent, entropy-decoded
    guidance: np.ndarray | None = None  # (1, G, h, w), one cell per token: the continuous part's output
    sent: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per tile: sent positions, indices


@dataclass
class StreamInfo:
    stream: str
    width: int
    height: int
    bytes: int
    header_bytes: int
    model_id: str
    schedules: dict[str, int]
    rate: int  # the continuous stream's rate point (a vq stream carries its model's base point)

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


@cache
def _lane_pool() -> ThreadPoolExecutor:
    """The threads that hand windows to a Model's lanes (one pool for the process, made when first needed)."""
    return ThreadPoolExecutor(LANES, thread_name_prefix="hf-lane")


Render = Callable[[Window, Model], np.ndarray]  # a window's picture, drawn with the graphs of that Model


def _paint_pass(model: Model, graphs: tuple[str, ...], render: Render, out: np.ndarray, h: int, w: int,
                per_cell: int, window: int, margin: int, progress: Progress | None, in_place: bool = False,
                lane_window: int | None = None) -> None:
    """``tiling.paint`` for one decoding pass whose windows ``graphs`` render. A picture of several
    windows is drawn ``LANES`` windows at a time on the Model's lanes sibling (``Model.lanes``: each
    on part of the threads, which onnxruntime uses better) in windows of ``lane_window`` cells (about
    half the area: the same memory for both), where the pass gives one and lanes pay. Such a pass
    hands its graphs' arenas back when it ends (``Model.shrink``), so the passes' arenas do not
    stack up; a one-window picture keeps them for the next call."""
    lanes = model.lanes() if lane_window is not None and len(windows(h, w, window, margin)) > 1 else None
    if lanes is None:
        if paint(lambda win: render(win, model), out, h, w, per_cell, window, margin, progress, in_place) > 1:
            for graph in graphs:
                model.shrink(graph)
        return
    paint(lambda win: render(win, lanes), out, h, w, per_cell, lane_window, margin, progress, in_place,
          run_many=_lane_pool().map)
    for graph in graphs:
        lanes.shrink(graph)


class _Phases:
    """One ``progress`` over a decode drawn in several passes, each window by window: pass k of n
    reports its (done, total) as (k·total + done, n·total), so a bar fills once, not n times."""

    def __init__(self, progress: Progress | None, n: int):
        self.progress, self.n, self.k = progress, n, -1

    def next(self) -> Progress | None:
        self.k += 1
        if self.progress is None:
            return None
        k, n, report = self.k, self.n, self.progress
        return lambda done, total: report(k * total + done, n * total)


class Codec:
    def __init__(self, model: Model, tile_batch: int = 1, correction: bool = True, fusion: bool = True):
        if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
            raise ValueError(f"tile_batch must be an integer ≥ 1, got {tile_batch!r}")
        if not isinstance(correction, bool):
            raise ValueError(f"correction must be True or False, got {correction!r}")
        if not isinstance(fusion, bool):
            raise ValueError(f"fusion must be True or False, got {fusion!r}")
        self.model = model
        self.tile_batch = tile_batch
        # False decodes hybrid streams with the plain VQ decoder: the stage-3 ablation of the benchmarks
        self.correction = correction
        # False leaves out the last hybrid step (the pixel decoder's picture as is): what the fusion trains on
        self.fusion = fusion
        self.geometry = model.geometry  # the model's sizes (tiling.Geometry, from its manifest)
        # tokens of context each pixel-decoder window needs: the decoder's receptive field
        self.decode_margin = int(model.manifest.get("decoder_margin", DECODE_MARGIN))
        self.tokens = TokenPart(self)
        self.continuous = ContinuousPart(self)

    @classmethod
    def load(cls, model_dir: Path | str | None = None, provider: str = "auto", threads: int | None = None,
             optimise: bool = True, tile_batch: int = 1) -> Codec:
        """``model_dir=None`` loads the default model shipped inside the package. ``tile_batch``
        tiles go through each graph at once: on a CPU 1 is as fast as 4 and needs a third of the
        memory (measured); batches pay off on a GPU."""
        return cls(Model.load(None if model_dir is None else Path(model_dir), provider, threads, optimise), tile_batch)

    def parts(self, kind: StreamKind) -> list[TokenPart | ContinuousPart]:
        """What a stream of this kind carries, in decode order (the encoder pushes in reverse)."""
        return [p for p, carried in ((self.continuous, kind.continuous), (self.tokens, kind.tokens)) if carried]

    # ------------------------------------------------------------------------------- compress
    def compress(self, rgb: np.ndarray, mask: str = "auto", stream: str = "hybrid",
                 progress: Progress | None = None, *, rate: int | None = None, quality: int | None = None,
                 target_bpp: float | None = None, max_bytes: int | None = None) -> bytes:
        """``rgb`` (H, W, 3) uint8 → stream bytes. The size is chosen by at most one of ``quality``
        (a preset: rate point and mask), ``target_bpp`` or ``max_bytes`` (exact caps: the best
        stream that fits, else ``ratecontrol.RateError`` naming the smallest reachable size); with
        none of them ``mask`` and ``rate`` (the continuous stream's rate point, 0 …
        ``model.rate_points`` − 1 in increasing rate) decide, and the default (``"auto"``, no rate)
        is capped at ``ratecontrol.DEFAULT_MAX_BPP`` (runtime/ratecontrol.py says how)."""
        from . import ratecontrol  # it builds on this module

        return ratecontrol.compress(self, rgb, mask, stream, progress, rate,
                                    ratecontrol.SizeRequest(quality, target_bpp, max_bytes))

    def analyse(self, rgb: np.ndarray, mask: str = "auto", stream: str = "hybrid",
                progress: Progress | None = None, rate: int | None = None) -> Symbols:
        """Everything the stream will carry, before entropy coding (``mask`` and ``rate`` taken
        literally; rate None: the model's base point)."""
        check_image(rgb)
        kind = stream_kind(stream)
        rate = self.check_rate(rate, stream)
        grid = self.geometry.tiles(rgb.shape[0], rgb.shape[1])
        padded = pad(rgb, grid)
        sym = Symbols(Header(stream, grid.width, grid.height, self.model.model_id, [], rate))
        for part in reversed(self.parts(kind)):  # tokens (tile by tile, with progress) before the one-pass latent
            part.analyse(sym, rgb, padded, grid, mask, progress)
        if progress:
            progress(grid.count, grid.count)
        return sym

    def check_rate(self, rate: int | None, stream: str) -> int:
        """The rate point a ``stream`` stream gets for ``rate`` (None: the model's base point). A vq
        stream has no continuous stream, so it takes no rate: asking it for another point is an error
        rather than a silent no-op (its header carries the base point)."""
        if rate is None:
            return self.model.base_rate
        self.model.rate_point(rate)  # ValueError naming the model's points
        if not stream_kind(stream).continuous and rate != self.model.base_rate:
            raise ValueError(f"a {stream} stream has no continuous stream and so no rate point; leave the rate "
                             f"unset (or {self.model.base_rate}, the base point)")
        return int(rate)

    def entropy_code(self, sym: Symbols) -> bytes:
        """One ANS payload; padded with terminators when it is below the format's minimum per tile
        (only unusually flat or sparse images, see streams.StreamKind.min_payload_per_tile)."""
        terminators = 1
        while (short := bitstream.payload_shortfall(sym.header, words := self._payload(sym, terminators))) > 0:
            terminators += -(-8 * short // TERMINATOR_BITS)
        return bitstream.write(sym.header, words)

    def _payload(self, sym: Symbols, terminators: int) -> np.ndarray:
        enc = Encoder(self.model.tables, terminators)
        for part in reversed(self.parts(sym.header.kind)):
            part.push(enc, sym)
        return enc.finish()

    # ----------------------------------------------------------------------------- decompress
    def read_header(self, data: bytes) -> tuple[Header, np.ndarray, int]:
        header, words, header_bytes = bitstream.read(data)
        if header.model_id != self.model.model_id:
            raise BitstreamError(f"stream was made by model {header.model_id.hex()}, but the loaded model is "
                                 f"{self.model.model_id.hex()} ({self.model.name}); load the matching model")
        if header.rate >= self.model.rate_points:
            raise BitstreamError(f"stream uses rate point {header.rate}, but model {self.model.name} has "
                                 f"{self.model.rate_points} (0…{self.model.rate_points - 1})")
        if not header.kind.continuous and header.rate != self.model.base_rate:
            raise BitstreamError(f"malformed header: a {header.stream} stream carries its model's base rate point "
                                 f"{self.model.base_rate}, not {header.rate}")
        self._check_plausible(header, words)
        return header, words, header_bytes

    def _check_plausible(self, header: Header, words: np.ndarray) -> None:
        """Refuse a header that declares more symbols than its payload could possibly hold: every
        symbol costs at least −log2 of its model's largest probability. This stops a forged size
        from making the decoder allocate or work for a huge image."""
        grid = self.geometry.tiles(header.height, header.width)
        need = sum(part.min_bits(header, grid) for part in self.parts(header.kind))
        if 0.9 * need > 32 * len(words) + 64:
            raise BitstreamError("corrupt stream: payload too short for the declared image size")

    def decompress(self, data: bytes, progress: Progress | None = None) -> np.ndarray:
        header, grid, got = self._decode_payload(data)
        out = np.empty((grid.height, grid.width, 3), np.uint8)
        self.parts(header.kind)[-1].draw(header, grid, got, out, progress)  # the pixel decoder when there are tokens
        return out

    def pictures(self, data: bytes) -> dict[str, np.ndarray]:
        """Each part's own picture of a stream, unfused: ``"tokens"`` (the pixel decoder's) and/or
        ``"continuous"`` (the continuous reconstruction). What the fusion is trained on, and what
        benchmarks compare it with."""
        header, grid, got = self._decode_payload(data)
        out = {}
        for part in self.parts(header.kind):
            out[part.name] = np.empty((grid.height, grid.width, 3), np.uint8)
            part.draw(header, grid, got, out[part.name], None, fuse=False)
        return out

    def _decode_payload(self, data: bytes) -> tuple[Header, TileGrid, Decoded]:
        header, words, _ = self.read_header(data)
        grid = self.geometry.tiles(header.height, header.width)
        dec, got = Decoder(self.model.tables, words), Decoded()
        for part in self.parts(header.kind):  # entropy decoding only: no graph runs before dec.finish()
            part.pop(dec, header, grid, got)
        # A corrupt payload that still decodes to symbols is caught here, at the cost of its entropy
        # decoding alone (bounded by its size). Checked after the graphs, a 37 KB forged stream took
        # 4.7 s to refuse, most of it in the continuous synthesis.
        dec.finish()
        if got.y_hat is not None:
            self.continuous.synthesise(got)
        if got.guidance is not None and not np.isfinite(got.guidance).all():
            raise BitstreamError("corrupt payload: continuous stream decodes to invalid values")
        return header, grid, got

    # ------------------------------------------------------------------------------------ info
    def info(self, data: bytes) -> StreamInfo:
        header, _, header_bytes = bitstream.read(data)
        counts = {name: header.schedules.count(code) for code, name in enumerate(SCHEDULES)}
        return StreamInfo(header.stream, header.width, header.height, len(data), header_bytes,
                          header.model_id.hex(), {k: v for k, v in counts.items() if v}, header.rate)


class TokenPart:
    """The VQ tokens of ``hybrid`` and ``vq`` streams: per tile a mask schedule and the indices it
    sends; decoding restores the masked ones with the predictor and draws the picture with the
    pixel decoder (guided by the continuous part where the stream has one)."""

    name = "tokens"

    def __init__(self, codec: Codec):
        self.codec = codec
        self.model = codec.model

    # --- encode
    def analyse(self, sym: Symbols, rgb: np.ndarray, padded: np.ndarray, grid: TileGrid, mask: str,
                progress: Progress | None) -> None:
        schedules = self.choose_schedules(rgb, grid, mask, sym.header.kind)
        maps = self.maps(padded, grid, [t for t in range(grid.count) if self.sends(grid, t, schedules[t])], progress)
        self.fill(sym, grid, schedules, maps)

    def fill(self, sym: Symbols, grid: TileGrid, schedules: list[int], maps: np.ndarray) -> None:
        """Schedules and sent indices of one configuration, from the index maps (no graph runs:
        rate control tries many configurations of one analysis, runtime/ratecontrol.py)."""
        sym.header.schedules = list(schedules)
        sent = [maps[t][self._sent_positions(grid, t, c)] for t, c in enumerate(schedules)]
        sym.indices = np.concatenate(sent) if sent else np.zeros(0, np.int64)

    def push(self, enc: Encoder, sym: Symbols) -> None:
        enc.push_indices(sym.indices)

    def choose_schedules(self, rgb: np.ndarray, grid: TileGrid, mask: str, kind: StreamKind) -> list[int]:
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
        return [schedule_code(cm.schedule(rgb[grid.valid_region(t)])) for t in range(grid.count)]

    def _sent_positions(self, grid: TileGrid, t: int, code: int) -> np.ndarray:
        g = self.codec.geometry.grid
        return sent_mask(schedule_name(code), g) & grid.valid_tokens(t, g)

    def sends(self, grid: TileGrid, t: int, code: int) -> bool:
        """Whether tile ``t`` at schedule ``code`` sends any index (not at ``all``, nor over padding only)."""
        return bool(self._sent_positions(grid, t, code).any())

    def maps(self, padded: np.ndarray, grid: TileGrid, tiles: list[int], progress: Progress | None) -> np.ndarray:
        """(T, g, g) full index maps (the VQ encoder's output) of ``tiles``; other tiles' are zeros.
        Several tile batches go ``LANES`` at a time, each on the Model's lanes (one thread each; the
        encoder runs per tile, and its indices do not depend on the threads): a Kodak picture's 6
        tiles in 0.166 instead of 0.193 s (best of 5, benchmarks/RESULTS.md, session 31)."""
        g = self.codec.geometry.grid
        maps = np.zeros((grid.count, g, g), np.int64)
        chunks = [[tiles[k] for k in chunk] for chunk in batches(len(tiles), self.codec.tile_batch)]
        lanes = self.model.lanes() if len(chunks) > 1 else None
        model = lanes or self.model

        def encode(ids: list[int]) -> list[int]:
            stack = np.stack([tile_stack(padded, grid, range(t, t + 1))[0] for t in ids])
            maps[ids] = model.run("vq_encoder", image=_to_float(stack))[0]  # (each chunk its own tiles)
            return ids

        for ids in (_lane_pool().map if lanes else map)(encode, chunks):
            if progress:
                progress(ids[-1] + 1, grid.count)
        return maps

    # --- decode
    def min_bits(self, header: Header, grid: TileGrid) -> float:
        t = self.model.tables
        sent = sum(int(self._sent_positions(grid, k, c).sum()) for k, c in enumerate(header.schedules))
        return sent * float(-np.log2(t.index_prior.max() / t.index_prior.sum()))

    def pop(self, dec: Decoder, header: Header, grid: TileGrid, got: Decoded) -> None:
        for t, code in enumerate(header.schedules):
            pos = self._sent_positions(grid, t, code)
            got.sent.append((pos, dec.pop_indices(int(pos.sum()))))

    def draw(self, header: Header, grid: TileGrid, got: Decoded, out: np.ndarray, progress: Progress | None,
             fuse: bool = True) -> None:
        """The pixel decoder's picture; for a hybrid stream of a model with a ``fusion`` graph, merged
        with the continuous part's picture (``fuse=False``: the pixel decoder's alone)."""
        codes = self._restore_codes(grid, got.sent, got.guidance)
        fuse = fuse and header.kind.continuous and self.codec.fusion and self.model.has("fusion")
        phases = _Phases(progress, 3 if fuse else 1)
        self._decode_pixels(header, grid, codes, got.guidance, out, phases.next())
        if fuse:
            cont = np.empty_like(out)
            self.codec.continuous.draw(header, grid, got, cont, phases.next())
            self._fuse(out, cont, phases.next())

    def _fuse(self, out: np.ndarray, cont: np.ndarray, progress: Progress | None) -> None:
        """Pass 3 (models/fusion.py): the pixel decoder's picture ``out`` merged with the continuous
        reconstruction ``cont``, in place, in windows with a margin of the fusion's receptive field
        (manifest ``fusion_margin``, in tokens). The graph works at half resolution, so a window of
        odd size (only at the picture's bottom or right edge) is edge-padded by one pixel — as a
        whole-picture call pads it: windowed equals whole. Windows read the unfused pixels around them
        (``paint``'s ``in_place``: results are written a band late, no copy of the picture)."""
        px = self.codec.geometry.token_pixels
        rows, cols = -(-out.shape[0] // px), -(-out.shape[1] // px)

        def render(win: Window, model: Model) -> np.ndarray:
            a, b = out[win.read(px)], cont[win.read(px)]
            h, w = a.shape[:2]
            even = ((0, h % 2), (0, w % 2), (0, 0))
            a, b = np.pad(a, even, mode="edge"), np.pad(b, even, mode="edge")
            (rgb,) = model.run("fusion", pixels=_to_float(a[None]), continuous=_to_float(b[None]))
            return _to_u8(rgb)[0, :h, :w]

        _paint_pass(self.model, ("fusion",), render, out, rows, cols, px, FUSION_WINDOW,
                    int(self.model.manifest["fusion_margin"]), progress, in_place=True, lane_window=FUSION_LANE_WINDOW)

    def _tile_guidance(self, guidance: np.ndarray | None, grid: TileGrid, tiles: range) -> np.ndarray:
        g, px = self.codec.geometry.grid, self.codec.geometry.token_pixels
        if guidance is None:  # vq stream: the predictor runs with its "no guidance" input (zeros)
            return np.zeros((len(tiles), int(self.model.manifest["guidance_channels"]), g, g), np.float32)
        return np.stack([guidance[0, :, y // px : y // px + g, x // px : x // px + g]
                         for y, x in (grid.position(t) for t in tiles)])

    def _restore_codes(self, grid: TileGrid, sent: list[tuple[np.ndarray, np.ndarray]],
                       guidance: np.ndarray | None) -> np.ndarray:
        """Pass 1: every token's code vector, as one (code_dim, rows, cols) image: the codebook's where
        the index was sent, the predictor's where it was masked (its expected code, for a model whose
        pixel decoder was trained on those; see models/transformer.py ``codes``). Several tiles go
        ``LANES`` at a time, each on the Model's lanes (``Model.lanes``: one thread each, which
        onnxruntime uses better than two: a Kodak picture's 6 tiles in ≈ 0.03 instead of 0.05 s)."""
        g, px = self.codec.geometry.grid, self.codec.geometry.token_pixels
        book = self.model.codebook
        codes = np.zeros((book.shape[1], grid.rows * g, grid.cols * g), np.float32)
        chunks = list(batches(grid.count, self.codec.tile_batch))
        lanes = self.model.lanes() if len(chunks) > 1 else None
        model = lanes or self.model

        def restore(chunk: range) -> None:
            idx = np.zeros((len(chunk), g, g), np.int64)
            visible = np.zeros((len(chunk), g, g), bool)
            for k, t in enumerate(chunk):
                pos, values = sent[t]
                idx[k][pos] = values
                visible[k] = pos
            valid = np.stack([grid.valid_tokens(t, g) for t in chunk])
            if (valid & ~visible).any():
                (got,) = model.run("predictor", indices=idx, visible=visible,
                                   guidance=self._tile_guidance(guidance, grid, chunk))
            else:  # every index that touches the picture was sent
                got = self.model.codes(idx)
            for k, t in enumerate(chunk):  # (each chunk its own tiles: lanes write apart)
                y, x = (v // px for v in grid.position(t))
                codes[:, y : y + g, x : x + g] = got[k]

        list((_lane_pool().map if lanes else map)(restore, chunks))
        return codes

    def _decode_pixels(self, header: Header, grid: TileGrid, codes: np.ndarray, guidance: np.ndarray | None,
                       out: np.ndarray, progress: Progress | None) -> None:
        """Pass 2: the code image (only the tokens that touch the picture) decoded in large windows,
        each with a margin of at least the decoder's receptive field. With a position-wise decoder
        this equals decoding the whole code image in one call: no seams by construction."""
        px = self.codec.geometry.token_pixels
        rows, cols = -(-grid.height // px), -(-grid.width // px)
        codes = codes[:, :rows, :cols]
        # the correction network needs the guidance; --stream vq (no guidance) uses the plain VQ decoder
        fused = header.kind.continuous and self.codec.correction and self.model.has_correction
        if fused and self.model.has("pixel_head"):
            self._decode_head_tail(codes, guidance[:, :, :rows, :cols], out, progress)
            return

        def render(win: Window, model: Model) -> np.ndarray:
            c = np.ascontiguousarray(codes[(slice(None), *win.read())])[None]
            if fused:  # a model exported before session 17: head and tail in one graph
                g = np.ascontiguousarray(guidance[(0, slice(None), *win.read())])[None]
                (rgb,) = model.run("pixel_decoder", codes=c, guidance=g)
            else:
                (rgb,) = model.run("vq_decoder", codes=c)
            return _to_u8(rgb)[0]

        _paint_pass(self.model, ("pixel_decoder" if fused else "vq_decoder",), render, out, rows, cols, px,
                    DECODE_WINDOW, self.codec.decode_margin, progress)

    def _decode_head_tail(self, codes: np.ndarray, guidance: np.ndarray, out: np.ndarray,
                          progress: Progress | None) -> None:
        """Pass 2 with the pixel decoder as two graphs (models/correction.py ``PixelDecoder.head``):
        the tail does ≈ 89 % of the work but sees only ``tail_margin`` tokens around it, the head
        ``head_margin``. So each window of the tail reads a small margin of the head's features, which
        the head computes for it from a wider margin of codes. On 8000×6000 the decoder's work is
        ≈ 1.3× the picture's instead of ≈ 1.8× with the whole decoder's margin around every window.
        Still equal to one whole-picture call."""
        m = self.model.manifest
        head_margin, tail_margin, cells = (int(m[k]) for k in ("head_margin", "tail_margin", "head_cells"))
        rows, cols = codes.shape[1:]

        def render(win: Window, model: Model) -> np.ndarray:
            y0, y1, x0, x1 = win.outer
            a, b = max(0, y0 - head_margin), min(rows, y1 + head_margin)
            c, d = max(0, x0 - head_margin), min(cols, x1 + head_margin)
            (features,) = model.run("pixel_head", codes=np.ascontiguousarray(codes[None, :, a:b, c:d]),
                                    guidance=np.ascontiguousarray(guidance[:, :, a:b, c:d]))
            keep = (slice(None), slice(None), slice((y0 - a) * cells, (y1 - a) * cells),
                    slice((x0 - c) * cells, (x1 - c) * cells))
            (rgb,) = model.run("pixel_tail", features=np.ascontiguousarray(features[keep]))
            return _to_u8(rgb)[0]

        _paint_pass(self.model, ("pixel_tail", "pixel_head"), render, out, rows, cols,
                    self.codec.geometry.token_pixels, TAIL_WINDOW, tail_margin, progress, lane_window=TAIL_LANE_WINDOW)


class ContinuousPart:
    """The continuous latent of ``hybrid`` and ``continuous`` streams: a 4×-down analysis y with its
    hyperprior ẑ; decoding gives the guidance, one cell per token. On its own (no tokens) it draws
    the picture from the guidance: a learned ×4 up-sampling, or (older models) the low-res image, bicubic."""

    name = "continuous"

    def __init__(self, codec: Codec):
        self.codec = codec
        self.model = codec.model

    # --- encode
    def analyse(self, sym: Symbols, rgb: np.ndarray, padded: np.ndarray, grid: TileGrid, mask: str,
                progress: Progress | None) -> None:
        self.fill(sym, self.latent(padded))

    def latent(self, padded: np.ndarray) -> Latent:
        """The continuous analysis of an edge-padded image: y, ẑ and the hyperprior's (μ, σ)."""
        geo = self.codec.geometry
        y = windowed(lambda im: self.model.run("cont_analysis", image=im)[0], self._lowres(padded),
                     geo.latent_stride // geo.downscale, 1, LATENT_WINDOW, LATENT_MARGIN)
        (z,) = self.model.run("hyper_analysis", y=y)
        radius = self.model.tables.z_radius
        z_hat = np.clip(np.round(z[0]), -radius, radius)
        mean, scale = self.model.hyper(z_hat)
        return Latent(y[0].astype(np.float64), z_hat, mean, scale)

    def fill(self, sym: Symbols, latent: Latent) -> None:
        """The symbols of ``latent`` at the header's rate point (no graph runs: rate control codes one
        analysis several ways)."""
        point = self.model.rate_point(sym.header.rate)
        coded = slices.encode(self.model.context, self.model.tables, point, latent.y, latent.mean, latent.scale)
        sym.z_hat, sym.y_residual, sym.y_scale = latent.z_hat, coded.residual, coded.std

    def push(self, enc: Encoder, sym: Symbols) -> None:
        enc.push_y(sym.y_residual, sym.y_scale)
        enc.push_z(sym.z_hat)

    def _lowres(self, padded: np.ndarray) -> np.ndarray:
        h, w = padded.shape[:2]
        d = self.codec.geometry.downscale
        small = cv2.resize(padded, (w // d, h // d), interpolation=cv2.INTER_AREA)
        return _to_float(small[None])

    # --- decode
    def min_bits(self, header: Header, grid: TileGrid) -> float:
        geo = self.codec.geometry
        cells = grid.count * (geo.tile // geo.hyper_stride) ** 2
        return cells * float(-np.log2(self.model.tables.z_pmf.max(axis=1)).sum())

    def pop(self, dec: Decoder, header: Header, grid: TileGrid, got: Decoded) -> None:
        geo, m = self.codec.geometry, self.model.manifest
        ph, pw = grid.padded_shape
        z_hat = dec.pop_z((int(m["hyper_channels"]), ph // geo.hyper_stride, pw // geo.hyper_stride))
        mean, scale = self.model.hyper(z_hat)  # integer arithmetic, no graph: y's scales depend on it
        point = self.model.rate_point(header.rate)
        try:
            coded = slices.walk(self.model.context, self.model.tables, point, mean, scale,
                                lambda _part, _point, _mean, std: dec.pop_y(std))  # slice by slice
        except FixedPointError:  # only forged residuals can drive the context network that far
            raise EntropyError("corrupt payload: its continuous latent is out of range") from None
        got.y_hat = coded.y_hat.astype(np.float32)[None]

    def synthesise(self, got: Decoded) -> None:
        """The guidance from ŷ: run once the whole payload has been verified (``Codec.decompress``)."""
        geo = self.codec.geometry
        got.guidance = windowed(lambda y: self.model.run("cont_synthesis", y_hat=y)[0], got.y_hat,
                                1, geo.latent_stride // geo.token_pixels, LATENT_WINDOW, LATENT_MARGIN)

    def draw(self, header: Header, grid: TileGrid, got: Decoded, out: np.ndarray, progress: Progress | None,
             fuse: bool = True) -> None:
        """The continuous-only picture, in overlapping windows so memory stays bounded: a learned
        up-sampling graph gives full-resolution pixels (manifest ``reconstruct_pixels`` = 1, with its
        receptive field as ``reconstruct_margin``); older models give the low-res image, which is
        upsampled ×4 bicubic here."""
        guidance = got.guidance
        per_cell = self.codec.geometry.token_pixels  # full-resolution pixels per guidance cell
        m = self.model.manifest
        learned = int(m.get("reconstruct_pixels", self.codec.geometry.downscale)) == 1
        # full-resolution features are 16× the low-res ones: half-size windows keep memory as before (full-size
        # ones measured in session 17: 8000×6000 decode peak 920 → 1192 MB, no faster)
        size, margin = (RECON_WINDOW // 2, int(m["reconstruct_margin"])) if learned else (RECON_WINDOW, RECON_MARGIN)

        def render(win: Window, model: Model) -> np.ndarray:
            g = np.ascontiguousarray(guidance[(0, slice(None), *win.read())])[None]
            (img,) = model.run("cont_reconstruct", guidance=g)
            if learned:
                return _to_u8(img)[0]
            ry, rx = win.read(per_cell)
            return cv2.resize(_to_u8(img)[0], (rx.stop - rx.start, ry.stop - ry.start), interpolation=cv2.INTER_CUBIC)

        # lanes: two windows of the same size at once (its windows' arenas are small: the pass's peak is
        # 0.8 GB on 8000×6000 either way, below the pixel and fusion passes'), for the learned up-sampling only
        _paint_pass(self.model, ("cont_reconstruct",), render, out, *guidance.shape[2:], per_cell, size, margin,
                    progress, lane_window=size if learned else None)
