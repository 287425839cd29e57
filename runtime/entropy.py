"""Entropy coding with constriction: one ANS stream per image for every symbol.

Decode order (the ANS stack pops what was pushed last, so the encoder pushes in reverse):
  1. ẑ   hyper-latent, per-channel factorized prior (pmf tables from the manifest)
  2. ŷ   latent residuals round(y − μ), Gaussian N(0, σ) with μ, σ from the integer hyper synthesis
  3. indices of the sent VQ tokens, tile by tile, static categorical prior from the manifest
  4. ≥ 1 terminator: the 24-bit all-ones symbol under a uniform model, pushed first
One stream for all of them avoids a 32-bit flush per segment (≈ several % of a 1.5 kB file).

Why the terminator: an ANS decoder that runs out of data silently keeps yielding symbols (zeros),
so a truncated or relabelled payload would decode to an image. The terminator puts the encoder's
starting state at 2^24 − 1, where no symbol of any model is free; a decoder that read past the real
data therefore cannot land on the terminators and an empty coder (``Decoder.finish``). Extra
terminators are also how an encoder pads a payload up to the format's minimum per tile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

from .bitstream import BitstreamError

_model = constriction.stream.model
_stack = constriction.stream.stack


TERMINATOR = (1 << 24) - 1
TERMINATOR_BITS = 24
_TERMINATOR_MODEL = _model.Uniform(1 << TERMINATOR_BITS)


class EntropyError(BitstreamError):
    """The payload is not a valid encoding for its header (corrupt, truncated or relabelled)."""


@dataclass
class EntropyTables:
    """Static tables from the manifest."""

    z_pmf: np.ndarray  # (C, 2R+1), symbols −R … R
    scale_table: np.ndarray  # (S,) standard deviations, ascending
    y_radius: int  # residuals are clipped to −L … L
    index_prior: np.ndarray  # (n_codes,)

    @property
    def z_radius(self) -> int:
        return (self.z_pmf.shape[1] - 1) // 2

    def scale_index(self, scale: np.ndarray) -> np.ndarray:
        """Smallest table entry ≥ the predicted scale (deterministic: exact comparisons)."""
        return np.minimum(np.searchsorted(self.scale_table, scale, side="left"), len(self.scale_table) - 1)

    def stds(self, scale: np.ndarray) -> np.ndarray:
        return self.scale_table[self.scale_index(scale)].ravel()


def _z_probs(tables: EntropyTables, shape: tuple[int, ...]) -> np.ndarray:
    c, h, w = shape
    return np.repeat(tables.z_pmf, h * w, axis=0)


class Encoder:
    """Push segments in *reverse* decode order: indices, then y, then z; then ``finish()``.
    ``terminators`` (≥ 1) end the payload; more of them pad it (24 bits each)."""

    def __init__(self, tables: EntropyTables, terminators: int = 1):
        if terminators < 1:
            raise ValueError("a payload needs at least one terminator")
        self.t = tables
        self.coder = _stack.AnsCoder()
        self.coder.encode_reverse(np.full(terminators, TERMINATOR, np.int32), _TERMINATOR_MODEL)

    def push_indices(self, indices: np.ndarray) -> None:
        if indices.size:
            self.coder.encode_reverse(indices.astype(np.int32).ravel(),
                                      _model.Categorical(self.t.index_prior, perfect=False))

    def push_y(self, residual: np.ndarray, scale: np.ndarray) -> None:
        sym = residual.astype(np.int32).ravel()
        fam = _model.QuantizedGaussian(-self.t.y_radius, self.t.y_radius)
        self.coder.encode_reverse(sym, fam, np.zeros(sym.size), self.t.stds(scale))

    def push_z(self, z: np.ndarray) -> None:
        sym = (z.astype(np.int32) + self.t.z_radius).ravel()
        self.coder.encode_reverse(sym, _model.Categorical(perfect=False), _z_probs(self.t, z.shape))

    def finish(self) -> np.ndarray:
        return self.coder.get_compressed()

    def ideal_bits(self) -> float:
        return float(self.coder.num_bits())


class Decoder:
    def __init__(self, tables: EntropyTables, words: np.ndarray):
        self.t = tables
        self.coder = self._guard(_stack.AnsCoder, words.astype(np.uint32))

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (KeyError, ValueError, RuntimeError, AssertionError) as e:
            raise EntropyError(f"corrupt payload ({type(e).__name__})") from None

    def pop_z(self, shape: tuple[int, int, int]) -> np.ndarray:
        sym = self._guard(self.coder.decode, _model.Categorical(perfect=False), _z_probs(self.t, shape))
        return (np.asarray(sym, np.int64) - self.t.z_radius).reshape(shape)

    def pop_y(self, scale: np.ndarray) -> np.ndarray:
        fam = _model.QuantizedGaussian(-self.t.y_radius, self.t.y_radius)
        n = scale.size
        sym = self._guard(self.coder.decode, fam, np.zeros(n), self.t.stds(scale))
        return np.asarray(sym, np.int64).reshape(scale.shape)

    def pop_indices(self, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, np.int64)
        model = _model.Categorical(self.t.index_prior, perfect=False)
        return np.asarray(self._guard(self.coder.decode, model, n), np.int64)

    def finish(self) -> None:
        """After the last symbol exactly the terminators must remain: k of them are the integer
        2^(24k) − 1, i.e. 24k − 1 valid bits. Anything else (data left over, or a decoder that ran
        past the end of its data) is refused."""
        bits = self.coder.num_valid_bits() + 1
        if bits < TERMINATOR_BITS or bits % TERMINATOR_BITS:
            raise EntropyError("corrupt payload: it does not end where the header says")
        ends = self._guard(self.coder.decode, _TERMINATOR_MODEL, bits // TERMINATOR_BITS)
        if not (np.all(np.asarray(ends) == TERMINATOR) and self.coder.is_empty()):
            raise EntropyError("corrupt payload: it does not end where the header says")
