"""Rate points of the continuous stream: the one place that knows what a point does to the symbols.

A model may carry K rate points (manifest ``rate_points``, ordered by increasing rate, FORMAT.md), each
a per-channel gain vector and inverse gain vector over y's channels (Cui et al. 2021, "asymmetric
gained" compression; trained with every network frozen, models/hyperprior.py). At point k:

    encoder   q = clip(round(y·gain − μ·gain), −L, L), coded with σ' = σ·gain (scale-table lookup)
    decoder   ŷ = (q + μ·gain)·inv_gain                      → the synthesis, as without points

μ and σ come from the integer hyper synthesis on a 2^-10 grid and the gains are integer multiples of
2^-GAIN_BITS, so μ·gain and σ·gain are exact float64 products: encoder and decoder derive the same σ'
(and scale index) on every CPU. The base point has gain = inv_gain = 1 exactly, so it codes the very
same symbols as a model without rate points; a manifest without ``rate_points`` has only that point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .bitstream import MAX_RATE

GAIN_BITS = 12
MAX_GAIN = 256.0  # keeps every product above exact in float64 (and is far beyond any useful gain)
MAX_POINTS = MAX_RATE + 1  # the stream header holds the point in one byte


@dataclass(frozen=True)
class RatePoint:
    gain: np.ndarray | None  # (M,) float64; None: the identity (base point)
    inv_gain: np.ndarray | None

    def _g(self, a: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        return a if g is None else a * g.reshape(-1, *([1] * (a.ndim - 1)))

    def channels(self, part: slice) -> RatePoint:
        """The same point over a slice of y's channels (the channel-wise context codes y slice by slice)."""
        return RatePoint(None if self.gain is None else self.gain[part],
                         None if self.inv_gain is None else self.inv_gain[part])

    def scale(self, scale: np.ndarray) -> np.ndarray:
        """The coded std before the table lookup: σ·gain, (M, h, w)."""
        return self._g(scale, self.gain)

    def residual(self, y: np.ndarray, mean: np.ndarray, radius: int) -> np.ndarray:
        """Encoder: the coded symbols clip(round(y·gain − μ·gain), −radius, radius)."""
        y = y.astype(np.float64)
        return np.clip(np.round(self._g(y, self.gain) - self._g(mean, self.gain)), -radius, radius)

    def latent(self, residual: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """Decoder: ŷ = (q + μ·gain)·inv_gain, in the synthesis' (base point's) units."""
        return self._g(residual + self._g(mean, self.gain), self.inv_gain)


BASE = RatePoint(None, None)
# what --rate means, for every command that takes it (hf-run compress/eval; the point count is the model's)
HELP = ("rate point of the continuous stream: 0 = fewest bits … the model's last = most (hf-run info shows "
        "a stream's); default: the model's base point. Not for --stream vq")


def _gains(values: Any, channels: int, what: str) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if a.shape != (channels,):
        raise ValueError(f"{what} must hold {channels} values")
    units = a * (1 << GAIN_BITS)
    if not (np.isfinite(a).all() and (a > 0).all() and (a <= MAX_GAIN).all() and (units == np.round(units)).all()):
        raise ValueError(f"{what} must be positive multiples of 2^-{GAIN_BITS}, at most {MAX_GAIN:g}")
    return a


def from_manifest(manifest: dict[str, Any]) -> tuple[list[RatePoint], int]:
    """(points in increasing rate, index of the base point). Raises ValueError naming the bad field."""
    if "rate_points" not in manifest and "base_rate" not in manifest:
        return [BASE], 0
    entries, base = manifest["rate_points"], manifest["base_rate"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_POINTS:
        raise ValueError(f"rate_points must be a list of 1…{MAX_POINTS} points")
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base < len(entries):
        raise ValueError(f"base_rate must be an index into rate_points (0…{len(entries) - 1})")
    channels = int(manifest["latent_channels"])
    points = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"gain", "inv_gain"}:
            raise ValueError(f"rate_points[{k}] must hold exactly 'gain' and 'inv_gain'")
        gain, inv = (_gains(e[key], channels, f"rate_points[{k}].{key}") for key in ("gain", "inv_gain"))
        if k == base:
            if not ((gain == 1).all() and (inv == 1).all()):
                raise ValueError(f"rate_points[{k}] is the base point: its gains must be exactly 1")
            points.append(BASE)
        else:
            points.append(RatePoint(gain, inv))
    return points, base
