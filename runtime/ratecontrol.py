"""Rate control: streams of the size or quality you ask for.

Four ways to choose a stream's size (``Codec.compress``; the CLI's options of the same names):

- ``mask`` and ``rate`` alone: that schedule at that rate point of the continuous stream (None: the
  model's base point), literally. The default, ``mask="auto"`` with no rate, is the complexity-aware
  choice at the base point **capped at DEFAULT_MAX_BPP**: when auto's stream is larger, the
  search below fits it into the cap; when no stream of the image fits (a tiny image: every 256²
  tile costs at least 39 payload bytes, FORMAT.md), the smallest stream is returned, without error.
- ``quality=q``: preset q of ``LADDER`` (a rate point, a mask and a stream), q = 1 … len(LADDER),
  quality rising with rate (benchmarks/ladder.py).
- ``max_bytes=n``: the best stream of at most n bytes. Exact: the returned stream is never longer.
- ``target_bpp=x``: the same with n = the largest byte count whose bpp (8·n / (W·H)) is ≤ x.
Asking for less than the image's smallest stream raises ``RateError`` (a ``ValueError``) naming it.

The search, and why it is cheap: the VQ encoder and the continuous analysis run once per image;
any configuration (stream × rate point × a schedule per tile) is then only an entropy coding of
symbols already computed (milliseconds), so candidates are judged by their real byte counts, never
by an estimate. Which configurations are tried:

1. The rungs of ``PATH`` (uniform configurations: a rate point, one mask for every tile, and the
   stream), cheapest first, each better than the last in mean bpp, PSNR and LPIPS-Alex on val and
   carrying at least what the last one carries (a rate point as high, every index it sent), so that
   a rung cannot be worse on other images by trading one for the other (``python -m
   benchmarks.ladder choose``). Every rung is coded; the highest
   one that fits is kept. The cheapest rungs are the continuous stream alone: a hybrid stream pays
   at least 128 bytes per tile (FORMAT.md), 0.0156 bpp and more, which is too much for ≈ 0.01 bpp.
2. At that rung's rate point, tiles are upgraded along ``UPGRADES`` from the rung's mask level by
   level: every tile reaches 1_16 before any reaches 1_4, and so on (the first indices buy the most
   LPIPS-Alex per bit, so spreading them evenly comes first), busy tiles first within a level
   (complexity score, the order ``auto`` uses; on val the order changes PSNR by < 0.03 dB, and
   busy-first is the best of the orders an encoder can know); each step improved mean PSNR and
   LPIPS-Alex on val. A binary search finds the longest prefix of these upgrades that fits, so the
   budget is filled to within one tile's upgrade.
   Byte counts along either path are not strictly monotone (a uniform schedule needs no per-tile
   table in the header; padding to the format's minimum rounds), so the search only ever keeps a
   candidate it has measured to fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .masking import schedule_code
from .streams import stream_kind
from .tiling import TileGrid, pad

if TYPE_CHECKING:  # the CLI imports this module for its options: the codec (onnxruntime) loads later
    from collections.abc import Callable, Sequence

    from .codec import Codec, Latent, Progress

DEFAULT_MAX_BPP = 0.05  # the default stream (mask "auto", nothing else asked) stays under this
# The search's per-tile levels. 1_9 is left out: on val (s9, 29 images) it costs 0.0014 bpp more than 1_16
# for 0.005 dB less PSNR; each step below improves mean PSNR and LPIPS-Alex (benchmarks/ladder.py choose).
UPGRADES: tuple[str, ...] = ("all", "1_16", "1_4", "1_2", "none")


@dataclass(frozen=True)
class Preset:
    """A uniform configuration: a rate point (counted from the model's base point, the rate its
    networks were trained at; a model without that point uses its nearest one), one mask for every
    tile, and the stream (hybrid, or the continuous stream alone: mask "none")."""

    rate_offset: int
    mask: str
    stream: str = "hybrid"


def _chain(spec: str) -> tuple[Preset, ...]:
    """"c-3 c-2 -2:all 0:1_16" → continuous at offset −3, −2, hybrid at −2 with all, …"""
    out = []
    for item in spec.split():
        if item.startswith("c"):
            out.append(Preset(int(item[1:]), "none", "continuous"))
        else:
            rate, mask = item.split(":")
            out.append(Preset(int(rate), mask))
    return tuple(out)


# The search's rungs, cheapest first (module docstring, step 1), "c-3" = the continuous stream alone at
# base − 3, "0:1_4" = hybrid at the base point with 1_4 on every tile. Chosen for s11 on val (29 images,
# `python -m benchmarks.ladder candidates --every 3`; `choose` checks it, benchmarks/RESULTS.md "Quality ladder
# on s11"): the continuous stream below the hybrid's floor, the hybrid at base − 1 with no index (busy images
# whose base-point stream exceeds a budget still get a hybrid stream), then at the base point climbing the masks,
# then every index at rising rate points. Each step raises mean bpp, lowers LPIPS-Alex and carries at least what
# the last rung carries; each raises PSNR too except c-1 → -1:all (−0.25 dB for −0.215 LPIPS-Alex). Of the
# candidates that differ between c-1 and 0:1_4, this one filled `--target-bpp` 0.035 / 0.04 / 0.045 best on the
# first 24 val images (+0.19 / +0.31 / +0.26 dB and equal or lower LPIPS-Alex than climbing the masks at base − 1).
PATH_SPEC = "c-3 c-2 c-1 -1:all 0:all 0:1_16 0:1_4 0:1_2 0:none 1:none 2:none 3:none 4:none 5:none"
PATH: tuple[Preset, ...] = _chain(PATH_SPEC)
# Quality 1 … len(LADDER): the rungs of PATH along which bpp, PSNR and LPIPS-Alex all rise, both ends and the
# rungs nearest an even spacing of log bpp between them (`choose` prints it; val means 0.0113 … 0.1691 bpp).
LADDER: tuple[Preset, ...] = _chain("c-3 c-2 c-1 0:all 0:1_4 0:1_2 1:none 3:none 5:none")


class RateError(ValueError):
    """The asked-for size is below the smallest stream this image can have."""

    def __init__(self, budget: int, smallest: int, pixels: int) -> None:
        self.budget, self.smallest = budget, smallest
        super().__init__(f"cannot fit in {budget} bytes ({8 * budget / pixels:.4f} bpp): the smallest stream for "
                         f"this image is {smallest} bytes ({8 * smallest / pixels:.4f} bpp)")


@dataclass(frozen=True)
class SizeRequest:
    """How big a stream should be: at most one field set; none = ``mask`` decides (auto: capped).
    The CLI's options (``--quality``, ``--target-bpp``, ``--max-bytes``, locally and with
    ``--engine ray``) take their names, metavars and help from these fields."""

    quality: int | None = field(default=None, metadata={
        "metavar": f"1..{len(LADDER)}",
        "help": f"quality preset, 1 (smallest) … {len(LADDER)} (best): a rate point and a mask (the "
                "lowest: the continuous stream alone); size and quality rise together"})
    target_bpp: float | None = field(default=None, metadata={
        "metavar": "X", "help": "the best stream of at most X bits per pixel (fails if the image cannot go that low)"})
    max_bytes: int | None = field(default=None, metadata={
        "metavar": "N", "help": "the best stream of at most N bytes (exact; fails if the image cannot go that low)"})

    def check(self, mask: str = "auto", rate: int | None = None, name: Callable[[str], str] = str) -> None:
        """Refuse a malformed or contradictory request; ``name`` spells an option (the CLI's flags)."""
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(map(name, given))} each choose the size: give one")
        if given and mask != "auto":
            raise ValueError(f"{name('mask')} {mask} fixes the schedules and {name(given[0])} chooses them: give one")
        if given and rate is not None:
            raise ValueError(f"{name('rate')} {rate} fixes the rate point and {name(given[0])} chooses it: give one")
        q, bpp, n = self.quality, self.target_bpp, self.max_bytes
        if q is not None and (not _is_int(q) or not 1 <= q <= len(LADDER)):
            raise ValueError(f"{name('quality')} must be an integer from 1 to {len(LADDER)}, got {q!r}")
        if bpp is not None and (isinstance(bpp, bool) or not isinstance(bpp, (int, float, np.integer, np.floating))
                                or not math.isfinite(bpp) or bpp <= 0):
            raise ValueError(f"{name('target_bpp')} must be a positive number, got {bpp!r}")
        if n is not None and (not _is_int(n) or n < 1):
            raise ValueError(f"{name('max_bytes')} must be a positive integer, got {n!r}")

    def kwargs(self) -> dict[str, Any]:
        """As ``Codec.compress`` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def budget(self, pixels: int) -> int | None:
        """The byte cap this request sets for an image of ``pixels`` pixels (None: no cap)."""
        if self.max_bytes is not None:
            return int(self.max_bytes)
        return None if self.target_bpp is None else bpp_budget(float(self.target_bpp), pixels)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def bpp_budget(bpp: float, pixels: int) -> int:
    """The largest byte count n with 8·n / pixels ≤ bpp, as the comparison is computed in floats
    (so a caller checking the returned stream's bpp against ``bpp`` never sees it above)."""
    n = math.floor(bpp * pixels / 8)
    while n > 0 and 8 * n / pixels > bpp:
        n -= 1
    while 8 * (n + 1) / pixels <= bpp:
        n += 1
    return n


def rate_points(model: Any) -> tuple[int, int]:
    """(number of rate points, base point) of a model (runtime/rates.py)."""
    return model.rate_points, model.base_rate


def resolve(model: Any, p: Preset) -> tuple[str, int, str]:
    """(stream, rate point, mask) of ``p`` for ``model`` (the nearest rate point it has)."""
    count, base = rate_points(model)
    return p.stream, min(max(base + p.rate_offset, 0), count - 1), p.mask


def preset(model: Any, quality: int) -> tuple[str, int, str]:
    """(stream, rate point, mask) of quality preset ``quality`` for ``model``."""
    return resolve(model, LADDER[quality - 1])


# ---------------------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class Rung:
    """A uniform configuration resolved for one model: stream, rate point, every tile's schedule code
    (-1 for a stream without tokens)."""

    stream: str
    rate: int
    level: int


@dataclass
class _Analysis:
    """One image's encoder-side analysis, from which any configuration's stream is one entropy coding."""

    codec: Codec
    stream: str  # what was asked for: hybrid (whose search may end at the continuous stream alone), vq, continuous
    grid: TileGrid
    maps: np.ndarray | None  # (T, 16, 16) full VQ index maps, or None for a continuous stream
    latent: Latent | None  # None for a vq stream
    order: list[int]  # tiles, busiest first (complexity score)
    levels: tuple[int, ...]  # schedule codes a tile climbs through, cheapest first
    rungs: list[Rung]  # the search's uniform configurations, cheapest first

    def encode(self, rung: Rung, schedules: list[int] | None = None) -> bytes:
        """The stream of ``rung``, or of its stream and rate with these per-tile ``schedules``."""
        from .bitstream import Header
        from .codec import Symbols

        c, grid = self.codec, self.grid
        sym = Symbols(Header(rung.stream, grid.width, grid.height, c.model.model_id, [], rung.rate))
        kind = stream_kind(rung.stream)
        if kind.tokens:
            assert self.maps is not None
            c.tokens.fill(sym, grid, [rung.level] * grid.count if schedules is None else schedules, self.maps)
        if kind.continuous:
            assert self.latent is not None
            c.continuous.fill(sym, self.latent)
        return c.entropy_code(sym)

    def steps(self, rung: Rung) -> int:
        """Upgrades along the path from ``rung``: every tile through every level above the rung's."""
        if not stream_kind(rung.stream).tokens:
            return 0
        return len(self.order) * (len(self.levels) - 1 - self.levels.index(rung.level))

    def schedules(self, rung: Rung, k: int) -> list[int]:
        """Per-tile schedules after the first ``k`` upgrades from ``rung`` (level by level, busy tiles first)."""
        levels = self.levels[self.levels.index(rung.level):]
        level, extra = divmod(k, len(self.order))
        codes = [levels[level]] * len(self.order)
        for t in self.order[:extra]:
            codes[t] = levels[level + 1]
        return codes


def _rungs(codec: Codec, stream: str, levels: tuple[int, ...], path: Sequence[Preset] = PATH) -> list[Rung]:
    """The search's uniform configurations for a ``stream`` request, cheapest first (a hybrid request's:
    ``path``, resolved for the model; benchmarks/ladder.py compares other paths through it)."""
    count, base = rate_points(codec.model)
    if stream == "continuous":
        rungs = [Rung("continuous", r, -1) for r in range(count)]
    elif stream == "vq":  # no continuous stream: the base point, the levels
        rungs = [Rung("vq", base, code) for code in levels]
    elif codec.model.has("predictor"):
        rungs = []
        for p in path:
            s, r, m = resolve(codec.model, p)
            rungs.append(Rung(s, r, -1 if s == "continuous" else schedule_code(m)))
    else:  # every index is sent: the rate points
        rungs = [Rung("hybrid", r, levels[0]) for r in range(count)]
    return list(dict.fromkeys(rungs))  # a model with fewer rate points resolves some rungs alike


def _analyse(codec: Codec, rgb: np.ndarray, stream: str, progress: Progress | None) -> _Analysis:
    from .codec import check_image

    check_image(rgb)
    kind = stream_kind(stream)
    grid = codec.geometry.tiles(rgb.shape[0], rgb.shape[1])
    padded = pad(rgb, grid)
    maps = codec.tokens.maps(padded, grid, list(range(grid.count)), progress) if kind.tokens else None
    latent = codec.continuous.latent(padded) if kind.continuous else None
    if progress:
        progress(grid.count, grid.count)
    cm = codec.model.complexity
    score = [cm.score(rgb[grid.valid_region(t)]) for t in range(grid.count)] if kind.tokens else []
    order = sorted(range(len(score)), key=lambda t: -score[t])
    levels = tuple(schedule_code(m) for m in (UPGRADES if codec.model.has("predictor") else ("none",)))
    return _Analysis(codec, stream, grid, maps, latent, order, levels, _rungs(codec, stream, levels))


@dataclass(frozen=True)
class Choice:
    """A configuration the search measured: the rung, upgrades from it, the stream."""

    rung: Rung
    step: int
    data: bytes


def fit(an: _Analysis, budget: int) -> tuple[Choice | None, Choice]:
    """(the chosen stream of at most ``budget`` bytes, or None; the smallest stream tried): the
    highest rung that fits, then the longest prefix of upgrades from it that fits. When the search
    returns at step k < the rung's path end, step k + 1 was measured and did not fit."""
    tried = [Choice(rung, 0, an.encode(rung)) for rung in an.rungs]
    smallest = min(tried, key=lambda c: len(c.data))
    fits = [c for c in tried if len(c.data) <= budget]
    if not fits:
        return None, smallest
    best = fits[-1]
    hi = an.steps(best.rung)  # invariant: `best` fits; every step above hi was measured not to
    while best.step < hi:
        mid = (best.step + hi + 1) // 2
        data = an.encode(best.rung, an.schedules(best.rung, mid))
        if len(data) <= budget:
            best = Choice(best.rung, mid, data)
        else:
            hi = mid - 1
    return best, smallest


def compress(codec: Codec, rgb: np.ndarray, mask: str, stream: str, progress: Progress | None,
             rate: int | None, request: SizeRequest) -> bytes:
    """``Codec.compress``: see the module docstring for what each request does."""
    request.check(mask, rate)
    if request.quality is not None:
        if stream != "hybrid":
            raise ValueError("quality presets are hybrid streams; other streams take a mask")
        preset_stream, preset_rate, preset_mask = preset(codec.model, request.quality)
        return codec.entropy_code(codec.analyse(rgb, preset_mask, preset_stream, progress, preset_rate))
    from .codec import check_image

    check_image(rgb)
    pixels = rgb.shape[0] * rgb.shape[1]
    budget = request.budget(pixels)
    if budget is None:
        if mask != "auto" or rate is not None:
            return codec.entropy_code(codec.analyse(rgb, mask, stream, progress, rate))
        an = _analyse(codec, rgb, stream, progress)
        kind = stream_kind(stream)
        schedules = codec.tokens.choose_schedules(rgb, an.grid, "auto", kind) if kind.tokens else []
        data = an.encode(Rung(stream, rate_points(codec.model)[1], -1), schedules)
        cap = bpp_budget(DEFAULT_MAX_BPP, pixels)
        if len(data) <= cap:
            return data
        best, smallest = fit(an, cap)
        return (best or smallest).data
    best, smallest = fit(_analyse(codec, rgb, stream, progress), budget)
    if best is None:
        raise RateError(budget, len(smallest.data), pixels)
    return best.data
