"""Rate control: streams of the size or quality you ask for.

Four ways to choose a stream's size (``Codec.compress``; the CLI's options of the same names):

- ``mask`` and ``rate`` alone: that schedule at that rate point of the continuous stream (None: the
  model's base point), literally. The default, ``mask="auto"`` with no rate, is the complexity-aware
  choice at the base point **capped at DEFAULT_MAX_BPP**: when auto's stream is larger, the
  search below fits it into the cap; when no stream of the image fits (a tiny image: every 256²
  tile costs at least 128 payload bytes, FORMAT.md), the smallest stream is returned, without error.
- ``quality=q``: preset q of ``LADDER`` (a rate point and a mask), q = 1 … len(LADDER), quality
  rising with rate (benchmarks/ladder.py).
- ``max_bytes=n``: the best stream of at most n bytes. Exact: the returned stream is never longer.
- ``target_bpp=x``: the same with n = the largest byte count whose bpp (8·n / (W·H)) is ≤ x.
Asking for less than the image's smallest stream raises ``RateError`` (a ``ValueError``) naming it.

The search, and why it is cheap: the VQ encoder and the continuous analysis run once per image;
any configuration (rate point × a schedule per tile) is then only an entropy coding of symbols
already computed (milliseconds), so candidates are judged by their real byte counts, never by
an estimate. Which configurations are tried, best first:

1. Rate points, highest first: the highest point whose cheapest stream (every tile at ``all``, no
   indices: the predictor restores them from the continuous stream) fits the budget.
2. At that point, tiles are upgraded along ``UPGRADES`` level by level: every tile reaches 1_16
   before any reaches 1_4, and so on (the first indices buy the most LPIPS-Alex per bit, so spreading
   them evenly comes first), busy tiles first within a level (complexity score, the order ``auto``
   uses; on val the order changes PSNR by < 0.03 dB, and busy-first is the best of the orders an
   encoder can know). A binary search finds the longest prefix of these upgrades that fits.
   ``python -m benchmarks.ladder choose`` measures both choices on val.
   Byte counts along the prefix are not strictly monotone (a uniform schedule needs no per-tile
   table in the header), so the search only ever keeps a candidate it has measured to fit.
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
    from collections.abc import Callable

    from .codec import Codec, Latent, Progress

DEFAULT_MAX_BPP = 0.05  # the default stream (mask "auto", nothing else asked) stays under this
# The search's per-tile levels. 1_9 is left out: on val (s9, 29 images) it costs 0.0014 bpp more than 1_16
# for 0.005 dB less PSNR; each step below improves mean PSNR and LPIPS-Alex (benchmarks/ladder.py choose).
UPGRADES: tuple[str, ...] = ("all", "1_16", "1_4", "1_2", "none")


@dataclass(frozen=True)
class Preset:
    """One rung of the quality ladder: a rate point (counted from the model's base point, the rate
    its networks were trained at) and a mask. A model without that point uses its nearest one."""

    rate_offset: int
    mask: str


# Quality 1 … len(LADDER), smallest first, so that bpp, PSNR and LPIPS-Alex all improve from each rung to
# the next. PROVISIONAL: at the base point, the chain of masks that does so on val (benchmarks/ladder.py
# choose; 1_9 is not on it), until the continuous rate points land and the ladder spans them.
LADDER: tuple[Preset, ...] = (
    Preset(0, "all"), Preset(0, "1_16"), Preset(0, "auto"), Preset(0, "1_4"), Preset(0, "1_2"), Preset(0, "none"),
)


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
        "help": f"quality preset, 1 (smallest) … {len(LADDER)} (best): a rate point and a mask; "
                "size and quality rise together"})
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


def preset(model: Any, quality: int) -> tuple[int, str]:
    """(rate point, mask) of quality preset ``quality`` for ``model``."""
    p = LADDER[quality - 1]
    count, base = rate_points(model)
    return min(max(base + p.rate_offset, 0), count - 1), p.mask


# ---------------------------------------------------------------------------------------- the search
@dataclass
class _Analysis:
    """One image's encoder-side analysis, from which any configuration's stream is one entropy coding."""

    codec: Codec
    stream: str
    grid: TileGrid
    maps: np.ndarray | None  # (T, 16, 16) full VQ index maps, or None for a continuous stream
    latent: Latent | None  # None for a vq stream
    order: list[int]  # tiles, busiest first (complexity score)
    levels: tuple[int, ...]  # schedule codes a tile climbs through, cheapest first

    def encode(self, rate: int, schedules: list[int]) -> bytes:
        from .bitstream import Header
        from .codec import Symbols

        c, grid = self.codec, self.grid
        sym = Symbols(Header(self.stream, grid.width, grid.height, c.model.model_id, [], rate))
        if self.maps is not None:
            c.tokens.fill(sym, grid, schedules, self.maps)
        if self.latent is not None:
            c.continuous.fill(sym, self.latent)
        return c.entropy_code(sym)

    def padded(self, data: bytes) -> bool:
        """Whether the stream's payload sits at the format's per-tile minimum (padding overshoots it
        by less than a terminator and a 32-bit word: 8 bytes)."""
        from .bitstream import min_payload_bytes, read

        _, _, header_bytes = read(data)
        return len(data) - header_bytes <= min_payload_bytes(self.stream, self.grid.count) + 8

    @property
    def steps(self) -> int:
        """Upgrades along the path: every tile through every level."""
        return 0 if self.maps is None else len(self.order) * (len(self.levels) - 1)

    def schedules(self, k: int) -> list[int]:
        """Per-tile schedules after the first ``k`` upgrades (level by level, busy tiles first)."""
        if self.maps is None:
            return []
        level, extra = divmod(k, len(self.order))
        codes = [self.levels[level]] * len(self.order)
        for t in self.order[:extra]:
            codes[t] = self.levels[level + 1]
        return codes


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
    levels = UPGRADES if codec.model.has("predictor") else ("none",)  # without a predictor every index is sent
    return _Analysis(codec, stream, grid, maps, latent, order, tuple(schedule_code(m) for m in levels))


def _rates(an: _Analysis) -> list[int]:
    count, base = rate_points(an.codec.model)
    return list(range(count)) if an.latent is not None else [base]  # a vq stream carries the base point


@dataclass(frozen=True)
class Choice:
    """A configuration the search measured: rate point, upgrades along the path, the stream."""

    rate: int
    step: int
    data: bytes


def fit(an: _Analysis, budget: int) -> tuple[Choice | None, Choice]:
    """(the chosen stream of at most ``budget`` bytes, or None; the smallest stream tried). When the
    search returns at step k < the path's end, step k + 1 was measured and did not fit.

    A stream whose payload is below the format's per-tile minimum is padded (small or flat images):
    then the first upgrades cost no bytes, and sizes along the path differ only by how the padding
    rounds (a few bytes either way). At such a rate point every step is tried, so that a budget a
    byte or two below the cheapest-looking stream is still met when some stream fits it."""
    smallest: Choice | None = None
    for rate in sorted(_rates(an), reverse=True):
        best = Choice(rate, 0, an.encode(rate, an.schedules(0)))
        tried = [best]
        if len(best.data) > budget and an.padded(best.data):
            tried += [Choice(rate, k, an.encode(rate, an.schedules(k))) for k in range(1, an.steps + 1)]
            fits = [c for c in tried if len(c.data) <= budget]
            best = max(fits, key=lambda c: c.step) if fits else best
        least = min(tried, key=lambda c: len(c.data))
        if smallest is None or len(least.data) < len(smallest.data):
            smallest = least
        if len(best.data) > budget:
            continue
        hi = an.steps  # invariant: `best` fits; every step above hi was measured not to
        while best.step < hi:
            mid = (best.step + hi + 1) // 2
            data = an.encode(rate, an.schedules(mid))
            if len(data) <= budget:
                best = Choice(rate, mid, data)
            else:
                hi = mid - 1
        return best, smallest
    assert smallest is not None
    return None, smallest


def compress(codec: Codec, rgb: np.ndarray, mask: str, stream: str, progress: Progress | None,
             rate: int | None, request: SizeRequest) -> bytes:
    """``Codec.compress``: see the module docstring for what each request does."""
    request.check(mask, rate)
    if request.quality is not None:
        if stream != "hybrid":
            raise ValueError("quality presets are hybrid streams; other streams take a mask")
        preset_rate, preset_mask = preset(codec.model, request.quality)
        return codec.entropy_code(codec.analyse(rgb, preset_mask, stream, progress, preset_rate))
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
        data = an.encode(rate_points(codec.model)[1], schedules)
        cap = bpp_budget(DEFAULT_MAX_BPP, pixels)
        if len(data) <= cap:
            return data
        best, smallest = fit(an, cap)
        return (best or smallest).data
    best, smallest = fit(_analyse(codec, rgb, stream, progress), budget)
    if best is None:
        raise RateError(budget, len(smallest.data), pixels)
    return best.data
