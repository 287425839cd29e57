"""Tile complexity for the complexity-aware mask mode (NumPy/OpenCV only).

Four metrics, each normalised to [0, 1] by (lo, hi) statistics measured on the training set
(they travel in the model manifest), then averaged. Simple tiles get the sparse schedule 1_9,
busy tiles the dense 1_2, the rest 1_4. The same code computes the training statistics, so the
numbers cannot drift between training and runtime.

Thresholds. The method's 0.24 / 0.77 are points on the paper's score scale, which depends on
normalisation details the paper does not pin down; on ours (training 1st/99th percentiles) only ~7 %
of photo tiles fall below 0.24, so ``auto`` was uniform 1_4 in all but name. ``fit(..., sparse_share=s)``
instead puts the low threshold at the training score's ``s``-quantile: the paper's operating point
(a rate saving against uniform 1_4) is reproduced by construction, and the score only decides *which*
tiles get the sparse schedule. ``models/train/release.py`` derives ``s`` from a rate target."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

METRICS = ("grey_entropy", "rms_contrast", "colour_entropy", "spectral_high")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def raw_metrics(tile: np.ndarray) -> np.ndarray:
    """(4,) float64 for an RGB uint8 tile (any size ≥ 2×2): grey-level entropy (bits), RMS contrast
    of luma in [0, 1], entropy of the 8×8×8 colour histogram (bits), and the share of spectral
    energy (DC excluded) above half the Nyquist frequency."""
    grey = cv2.cvtColor(np.ascontiguousarray(tile), cv2.COLOR_RGB2GRAY)
    grey_entropy = _entropy(np.bincount(grey.ravel(), minlength=256))
    contrast = float(grey.std() / 255.0)
    q = (tile >> 5).astype(np.int32)
    colour = _entropy(np.bincount((q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel(), minlength=512))
    f = np.abs(np.fft.fft2(grey.astype(np.float64) - grey.mean())) ** 2
    fy = np.abs(np.fft.fftfreq(grey.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(grey.shape[1]))[None, :]
    high = np.maximum(fy, fx) > 0.25
    total = f.sum()
    spectral = float(f[high].sum() / total) if total > 0 else 0.0
    return np.array([grey_entropy, contrast, colour, spectral])


@dataclass
class ComplexityModel:
    lo: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    hi: list[float] = field(default_factory=lambda: [8.0, 0.5, 9.0, 0.5])
    low_threshold: float = 0.24
    high_threshold: float = 0.77
    sparse_share: float | None = None  # the training share the low threshold was calibrated to, if any

    def score(self, tile: np.ndarray) -> float:
        return float(self.scores(raw_metrics(tile)))

    def scores(self, metrics: np.ndarray) -> np.ndarray:
        """Scores of (..., 4) raw metrics: each normalised by (lo, hi) and clipped, then averaged."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return np.clip((metrics - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0).mean(axis=-1)

    def schedule(self, tile: np.ndarray) -> str:
        return self.pick(self.score(tile))

    def pick(self, s: float) -> str:
        """The schedule for a tile of score ``s``."""
        if s < self.low_threshold:
            return "1_9"
        if s > self.high_threshold:
            return "1_2"
        return "1_4"

    @classmethod
    def fit(cls, tiles: list[np.ndarray], percentiles: tuple[float, float] = (1.0, 99.0),
            sparse_share: float | None = None) -> ComplexityModel:
        """Robust min/max (1st/99th percentiles) of each metric over training tiles; with
        ``sparse_share`` the low threshold becomes that quantile of the training tiles' scores
        (``None`` keeps the method's 0.24)."""
        m = np.stack([raw_metrics(t) for t in tiles])
        lo, hi = np.percentile(m, percentiles[0], axis=0), np.percentile(m, percentiles[1], axis=0)
        model = cls(lo=[float(v) for v in lo], hi=[float(v) for v in hi])
        if sparse_share is not None:
            model.sparse_share = float(np.clip(sparse_share, 0.0, 1.0))
            model.low_threshold = float(np.quantile(model.scores(m), model.sparse_share))
        return model
