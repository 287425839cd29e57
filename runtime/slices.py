"""The continuous latent y coded slice by slice: the one place that knows in which order y's symbols
are coded and where each one's entropy parameters come from.

Without a channel context (manifest has no ``channel_context``) y is one slice, coded with the
integer hyper synthesis' (μ, σ) — what every model before session 24 does. With one, y's channels
are cut into ``slices`` equal groups coded in channel order; for each group after the first the
integer context network (``fixedpoint.IntegerContext``) reads μ and σ's table index of that group and
the groups already decoded, and moves μ and the scale-table step:

    μ'_s, k_s = context(μ_s, idx(σ_s), ŷ_<s − μ_<s)
    q_s = clip(round(y_s·gain − μ'_s·gain), −L, L)         coded with std table[idx(σ_s·gain) + k_s]
    ŷ_s = (q_s + μ'_s·gain)·inv_gain

Every quantity is exact in float64 (runtime/rates.py, fixedpoint.py), so encoder and decoder walk the
same path on any machine. The symbols go into the ANS stream in the same order as without a context
(channel-major), so only the standard deviations differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .entropy import EntropyTables
from .fixedpoint import IntegerContext
from .rates import RatePoint

# (channels of this slice, the point over them, μ'_s, coded std) → the slice's symbols
Symbols = Callable[[slice, RatePoint, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class CodedLatent:
    residual: np.ndarray  # (M, h, w) integer symbols q
    std: np.ndarray  # (M, h, w) their coded standard deviations (scale-table entries)
    y_hat: np.ndarray  # (M, h, w) float64, the decoder's ŷ in the synthesis' units


def walk(context: IntegerContext | None, tables: EntropyTables, point: RatePoint, mean: np.ndarray,
         scale: np.ndarray, symbols: Symbols) -> CodedLatent:
    """Visit y's slices in decode order; ``symbols`` gives each slice's symbols (the encoder rounds y,
    the decoder pops them from the stream)."""
    m = mean.shape[0]
    count = 1 if context is None else context.slices
    if m % count:
        raise ValueError(f"{count} context slices do not divide the {m} latent channels")
    width, last = m // count, len(tables.scale_table) - 1
    residual, std, y_hat = np.zeros(mean.shape), np.zeros(mean.shape), np.zeros(mean.shape)
    decoded: list[np.ndarray] = []
    for s in range(count):
        part = slice(s * width, (s + 1) * width)
        here = point.channels(part)
        mu, step = mean[part], 0
        if s > 0 and context is not None:
            mu, step = context(s, mean[part], tables.scale_index(scale[part]), decoded)
        std[part] = tables.scale_table[np.clip(tables.scale_index(here.scale(scale[part])) + step, 0, last)]
        residual[part] = symbols(part, here, mu, std[part])
        y_hat[part] = here.latent(residual[part], mu)
        decoded.append(y_hat[part] - mean[part])
    return CodedLatent(residual, std, y_hat)


def encode(context: IntegerContext | None, tables: EntropyTables, point: RatePoint, y: np.ndarray,
           mean: np.ndarray, scale: np.ndarray) -> CodedLatent:
    """The encoder's walk: each slice's symbols are y rounded around that slice's μ'."""
    return walk(context, tables, point, mean, scale,
                lambda part, here, mu, _std: here.residual(y[part], mu, tables.y_radius))
