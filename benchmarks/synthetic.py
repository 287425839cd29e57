"""Deterministic photo-like images made from code, for benchmarks and committed test vectors that
must not contain Kodak or data-set images: smooth colour fields, edges and some texture."""

from __future__ import annotations

import numpy as np


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8, reproducible for a seed (NumPy's PCG64). np.sin may differ in the
    last bit between CPUs, so committed test vectors store their streams and images, not the seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.01, 0.05, (3, 2))
    base = np.stack([np.sin(x * fx + y * fy + p) for (fx, fy), p in zip(freq, phase)], -1) * 70 + 120
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    r = rng.uniform(0.1, 0.3) * min(height, width)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r * r
    base[disc] = base[disc] * 0.4 + rng.uniform(40, 220, 3) * 0.6
    base[:, int(width * rng.uniform(0.3, 0.7)) :] += 25  # a vertical edge
    texture = rng.integers(-12, 13, (height, width, 3))
    return np.clip(np.round(base) + texture, 0, 255).astype(np.uint8)
