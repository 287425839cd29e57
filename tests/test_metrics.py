"""The quality measures the benchmarks report: each must respond to what it claims to measure."""

import cv2
import numpy as np

from hybridflow.runtime import metrics


def _photo_like(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    img = cv2.resize(coarse, (128, 128), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)


def test_sharpness_ratio_one_for_itself_low_for_blur() -> None:
    x = _photo_like()
    blurred = cv2.GaussianBlur(x, (0, 0), 2.0)
    for scale in (1, 2):
        assert metrics.sharpness_ratio(x, x, scale) == 1.0
        assert metrics.sharpness_ratio(blurred, x, scale) < 0.3


def test_half_resolution_ratio_ignores_line_artefacts() -> None:
    """A blurred image with one-pixel lines looks sharp at full resolution and blurred at half."""
    x = _photo_like()
    lined = cv2.GaussianBlur(x, (0, 0), 2.0).astype(np.int16)
    lined[::2] += 30
    lined = np.clip(lined, 0, 255).astype(np.uint8)
    assert metrics.sharpness_ratio(lined, x) > 0.5
    assert metrics.sharpness_ratio(lined, x, scale=2) < 0.3
    q = metrics.quality(x, 100, lined)
    assert q["sharpness"] > 2 * q["sharpness_half"]
