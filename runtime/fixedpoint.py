"""The hyper synthesis (ẑ → mean and scale of y) in exact integer arithmetic.

Why: encoder and decoder must derive *bit-identical* entropy-model parameters, or the ANS decoder
reads garbage. A float network run by different execution providers, thread counts or CPUs can
differ in the last bits, and a quantised scale index can flip at a bin edge. Here every tensor is
an integer (activations scaled by 2**act_bits, weights by 2**w_bits) held in float64: products and
sums of such integers below 2**53 are exact whatever the summation order or BLAS kernel, so the
result is the same on every machine. Layers: nearest-up ×2 → conv3×3 → ReLU, twice, then conv3×3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EXACT_LIMIT = 2.0**52


class FixedPointError(ValueError):
    pass


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (I, H, W), w (O, I, 3, 3), b (O,) — all integer-valued float64. Returns (O, H, W)."""
    i, h, wd = x.shape
    cols = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))), (3, 3), axis=(1, 2))
    cols = cols.transpose(1, 2, 0, 3, 4).reshape(h * wd, i * 9)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    bound = np.abs(cols).max(initial=0) * np.abs(w).reshape(w.shape[0], -1).sum(1).max() + np.abs(b).max()
    if bound >= EXACT_LIMIT:
        raise FixedPointError("hyper synthesis left the exact integer range")
    return out.T.reshape(-1, h, wd)


def _up2(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


class IntegerHyperSynthesis:
    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], act_bits: int, w_bits: int):
        self.weights = [w.astype(np.float64) for w in weights]
        self.biases = [b.astype(np.float64) for b in biases]
        self.act_bits, self.w_bits = act_bits, w_bits

    @classmethod
    def quantise(cls, weights: list[np.ndarray], biases: list[np.ndarray], act_bits: int = 10,
                 w_bits: int = 12) -> IntegerHyperSynthesis:
        """Float weights (from the trained network) → integer weights, done once at export."""
        wq = [np.round(w.astype(np.float64) * 2.0**w_bits) for w in weights]
        bq = [np.round(b.astype(np.float64) * 2.0 ** (act_bits + w_bits)) for b in biases]
        return cls(wq, bq, act_bits, w_bits)

    def save(self, path: Path) -> None:
        arrays = {f"w{k}": w.astype(np.int32) for k, w in enumerate(self.weights)}
        arrays.update({f"b{k}": b.astype(np.int64) for k, b in enumerate(self.biases)})
        # compressed: the small integer weights shrink 2.5× (the tree travels to GPU windows; see README)
        np.savez_compressed(path, act_bits=self.act_bits, w_bits=self.w_bits, **arrays)

    @classmethod
    def load(cls, path: Path) -> IntegerHyperSynthesis:
        with np.load(path, allow_pickle=False) as f:
            n = sum(1 for k in f.files if k.startswith("w") and k != "w_bits")
            return cls([f[f"w{k}"] for k in range(n)], [f[f"b{k}"] for k in range(n)],
                       int(f["act_bits"]), int(f["w_bits"]))

    def _requantise(self, acc: np.ndarray) -> np.ndarray:
        return np.floor((acc + 2.0 ** (self.w_bits - 1)) / 2.0**self.w_bits)

    def __call__(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ẑ (C, h, w) integers → (mean, scale) of y, each (M, 4h, 4w) float64 on a 2**-act_bits grid."""
        x = z_hat.astype(np.float64) * 2.0**self.act_bits
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if k < last:
                x = _up2(x)
            x = self._requantise(_conv3x3(x, w, b))
            if k < last:
                x = np.maximum(x, 0.0)
        mean, scale = np.split(x, 2, axis=0)
        unit = 2.0**-self.act_bits
        return mean * unit, np.maximum(scale, 0.0) * unit
