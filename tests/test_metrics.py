"""The quality measures the benchmarks report: each must respond to what it claims to measure."""

import cv2
import numpy as np
import pytest

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


def test_psnr_known_values() -> None:
    x = _photo_like()
    assert metrics.psnr(x, x) == float("inf")
    y = np.clip(x.astype(int) + 5, 0, 255).astype(np.uint8)
    mse = np.mean((x.astype(float) - y) ** 2)
    assert metrics.psnr(x, y) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    assert metrics.psnr(np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)) == pytest.approx(0.0)
    one = np.full((4, 4, 3), 1, np.uint8)
    assert metrics.psnr(np.zeros((4, 4, 3), np.uint8), one) == pytest.approx(48.1308, abs=1e-4)


def test_ms_ssim_is_one_for_itself_and_falls_with_distortion() -> None:
    x = _photo_like()
    assert metrics.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(3)
    noisy = [np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8) for s in (5, 20, 60)]
    scores = [metrics.ms_ssim(x, n) for n in noisy]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0
    assert metrics.ms_ssim(x, cv2.GaussianBlur(x, (0, 0), 3.0)) < 0.9
    small = x[:20, :20]  # fewer scales, still defined
    assert metrics.ms_ssim(small, small) == pytest.approx(1.0, abs=1e-9)


def test_perplexity_counts_effective_codes() -> None:
    assert metrics.perplexity(np.array([5, 5, 5, 5])) == pytest.approx(4.0)
    assert metrics.perplexity(np.array([0, 7, 0, 0])) == pytest.approx(1.0)
    assert metrics.perplexity(np.array([10, 10, 0, 0, 0])) == pytest.approx(2.0)
    skewed = metrics.perplexity(np.array([90, 5, 5]))
    assert 1.0 < skewed < 3.0 and skewed == pytest.approx(np.exp(-(0.9 * np.log(0.9) + 0.1 * np.log(0.05))))
