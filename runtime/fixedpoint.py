"""The networks that derive entropy-model parameters, in exact integer arithmetic: the hyper synthesis
(ẑ → mean and scale of y) and the channel-wise context (decoded slices of y → the next slice's).

Why: encoder and decoder must derive *bit-identical* entropy-model parameters, or the ANS decoder
reads garbage. A float network run by different execution providers, thread counts or CPUs can
differ in the last bits, and a quantised scale index can flip at a bin edge. Here every tensor is
an integer (activations scaled by 2**act_bits, weights by 2**w_bits) held in float64: products and
sums of such integers below 2**53 are exact whatever the summation order or BLAS kernel, so the
result is the same on every machine. Layers are k×k convolutions (k odd, zero padding), ReLU and,
in the hyper synthesis, nearest-up ×2: nearest-up ×2 → conv3×3 → ReLU, twice, then conv3×3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EXACT_LIMIT = 2.0**52
# The grids every exported integer network uses (the exporter rounds the bundle's weights onto them
# first, export/grids.py): activations × 2**ACT_BITS, weights × 2**W_BITS, biases × 2**(ACT_BITS + W_BITS).
ACT_BITS, W_BITS = 10, 12


class FixedPointError(ValueError):
    pass


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (I, H, W), w (O, I, k, k), b (O,) — all integer-valued float64; k odd, zero padding k // 2.
    Returns (O, H, W)."""
    i, h, wd = x.shape
    k = w.shape[-1]
    if k == 1:
        cols = x.reshape(i, h * wd).T
    else:
        p = k // 2
        cols = sliding_window_view(np.pad(x, ((0, 0), (p, p), (p, p))), (k, k), axis=(1, 2))
        cols = cols.transpose(1, 2, 0, 3, 4).reshape(h * wd, i * k * k)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    bound = np.abs(cols).max(initial=0) * np.abs(w).reshape(w.shape[0], -1).sum(1).max() + np.abs(b).max()
    if bound >= EXACT_LIMIT:
        raise FixedPointError("an integer entropy-parameter network left the exact integer range")
    return out.T.reshape(-1, h, wd)


def _up2(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


class IntegerConvs:
    """A stack of convolutions with integer weights (×2**w_bits) and biases (×2**(act_bits + w_bits)),
    on activations that are integers ×2**act_bits."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], act_bits: int, w_bits: int):
        self.weights = [w.astype(np.float64) for w in weights]
        self.biases = [b.astype(np.float64) for b in biases]
        self.act_bits, self.w_bits = act_bits, w_bits

    @staticmethod
    def grid_bits(act_bits: int, w_bits: int) -> dict[str, int]:
        """Fraction bits of each parameter's grid: weights × 2**w_bits, biases × 2**(act_bits + w_bits)
        (a bias adds to products of activations and weights)."""
        return {"weight": w_bits, "bias": act_bits + w_bits}

    @staticmethod
    def quantised(weights: list[np.ndarray], biases: list[np.ndarray], act_bits: int, w_bits: int
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Float weights (from the trained network) → integer weights and biases, done once at export."""
        bits = IntegerConvs.grid_bits(act_bits, w_bits)
        wq = [np.round(w.astype(np.float64) * 2.0 ** bits["weight"]) for w in weights]
        bq = [np.round(b.astype(np.float64) * 2.0 ** bits["bias"]) for b in biases]
        return wq, bq

    def values(self, layer: int, part: str) -> np.ndarray:
        """Layer ``layer``'s integer weight or bias (``part``) as the float values it stands for."""
        ints = (self.weights if part == "weight" else self.biases)[layer]
        return ints / 2.0 ** self.grid_bits(self.act_bits, self.w_bits)[part]

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = {f"{prefix}w{k}": w.astype(np.int32) for k, w in enumerate(self.weights)}
        arrays.update({f"{prefix}b{k}": b.astype(np.int64) for k, b in enumerate(self.biases)})
        return arrays

    @staticmethod
    def layers_in(f: np.lib.npyio.NpzFile, prefix: str = "") -> tuple[list[np.ndarray], list[np.ndarray]]:
        n = sum(1 for k in f.files if k.startswith(f"{prefix}w") and k[len(prefix) + 1:].isdigit())
        return [f[f"{prefix}w{k}"] for k in range(n)], [f[f"{prefix}b{k}"] for k in range(n)]

    def on_grid(self, x: np.ndarray) -> np.ndarray:
        """Values → the activation grid's integers (rounded half up: exact, the same everywhere)."""
        return np.floor(x.astype(np.float64) * 2.0**self.act_bits + 0.5)

    def layer(self, k: int, x: np.ndarray) -> np.ndarray:
        """Convolution k on grid integers, requantised back onto the grid (no activation)."""
        acc = _conv(x, self.weights[k], self.biases[k])
        return np.floor((acc + 2.0 ** (self.w_bits - 1)) / 2.0**self.w_bits)

    def run(self, x: np.ndarray, up2: bool = False) -> np.ndarray:
        """Grid integers through every layer: conv → ReLU, the last without ReLU; with ``up2`` each
        layer but the last is preceded by nearest-up ×2."""
        last = len(self.weights) - 1
        for k in range(last + 1):
            if up2 and k < last:
                x = _up2(x)
            x = self.layer(k, x)
            if k < last:
                x = np.maximum(x, 0.0)
        return x


class IntegerHyperSynthesis(IntegerConvs):
    @classmethod
    def quantise(cls, weights: list[np.ndarray], biases: list[np.ndarray], act_bits: int = ACT_BITS,
                 w_bits: int = W_BITS) -> IntegerHyperSynthesis:
        return cls(*cls.quantised(weights, biases, act_bits, w_bits), act_bits, w_bits)

    def save(self, path: Path) -> None:
        # compressed: the small integer weights shrink 2.5× (the tree travels to GPU windows; see README)
        np.savez_compressed(path, act_bits=self.act_bits, w_bits=self.w_bits, **self.arrays())

    @classmethod
    def load(cls, path: Path) -> IntegerHyperSynthesis:
        with np.load(path, allow_pickle=False) as f:
            return cls(*cls.layers_in(f), int(f["act_bits"]), int(f["w_bits"]))

    def __call__(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ẑ (C, h, w) integers → (mean, scale) of y, each (M, 4h, 4w) float64 on a 2**-act_bits grid."""
        x = self.run(z_hat.astype(np.float64) * 2.0**self.act_bits, up2=True)
        mean, scale = np.split(x, 2, axis=0)
        unit = 2.0**-self.act_bits
        return mean * unit, np.maximum(scale, 0.0) * unit


# The scale-table index enters the context network as idx/8, and its scale output counts table steps in
# eighths (models/context.py trains with both). A table step is only e^0.1, so without the ×8 a
# zero-initialised network's scale output must grow ~10× larger for the same correction: it learnt slower
# (session 24: −2.8 % of the bits after 2 400 steps instead of −3.1 %). Powers of two keep the products exact.
CONTEXT_INDEX_INPUT = 0.125
CONTEXT_STEP_GAIN = 8.0


class IntegerContext:
    """The channel-wise context (models/context.py) in integers: one convolution stack per slice after
    the first, each conv → ReLU except the last."""

    def __init__(self, nets: list[IntegerConvs]):
        self.nets = nets

    @property
    def slices(self) -> int:
        return len(self.nets) + 1

    @classmethod
    def quantise(cls, nets: list[tuple[list[np.ndarray], list[np.ndarray]]], act_bits: int = ACT_BITS,
                 w_bits: int = W_BITS) -> IntegerContext:
        return cls([IntegerConvs(*IntegerConvs.quantised(w, b, act_bits, w_bits), act_bits, w_bits)
                    for w, b in nets])

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for s, net in enumerate(self.nets, start=1):
            arrays.update(net.arrays(f"s{s}_"))
        first = self.nets[0]
        np.savez_compressed(path, act_bits=first.act_bits, w_bits=first.w_bits, slices=self.slices, **arrays)

    @classmethod
    def load(cls, path: Path) -> IntegerContext:
        with np.load(path, allow_pickle=False) as f:
            act, wb, slices = int(f["act_bits"]), int(f["w_bits"]), int(f["slices"])
            if slices < 2:
                raise FixedPointError(f"a channel context has at least 2 slices, not {slices}")
            return cls([IntegerConvs(*IntegerConvs.layers_in(f, f"s{s}_"), act, wb) for s in range(1, slices)])

    def __call__(self, s: int, mean: np.ndarray, index: np.ndarray, decoded: list[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Slice s ≥ 1: (μ_s on the hyper grid, scale-table index of σ_s, [ŷ_t − μ_t for t < s]) →
        (μ'_s, integer step offset of the coded scale). Exact: the same on every machine."""
        net = self.nets[s - 1]
        x = net.run(net.on_grid(np.concatenate([mean, index * CONTEXT_INDEX_INPUT, *decoded])))
        delta, d = np.split(x * 2.0**-net.act_bits, 2, axis=0)
        return mean + delta, np.floor(CONTEXT_STEP_GAIN * d + 0.5).astype(np.int64)
