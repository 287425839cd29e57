"""Image quality metrics in NumPy/OpenCV (the runtime's ``eval`` and the benchmarks use these)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all RGB values of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _ssim_maps(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) averaged over RGB channels; uses fewer than 5 scales when the
    image is too small for them (the smallest scale must stay ≥ 11 pixels)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    scales = 5
    while scales > 1 and min(x.shape[:2]) / 2 ** (scales - 1) < 11:
        scales -= 1
    w = _MS_SSIM_WEIGHTS[:scales] / _MS_SSIM_WEIGHTS[:scales].sum()
    vals = []
    for ch in range(x.shape[2] if x.ndim == 3 else 1):
        xc = x[..., ch] if x.ndim == 3 else x
        yc = y[..., ch] if y.ndim == 3 else y
        parts = []
        for s in range(scales):
            if min(xc.shape) < 11:
                break
            ssim, cs = _ssim_maps(xc, yc)
            parts.append(ssim if s == scales - 1 else cs)
            xc = cv2.resize(xc, (xc.shape[1] // 2, xc.shape[0] // 2), interpolation=cv2.INTER_AREA)
            yc = cv2.resize(yc, (yc.shape[1] // 2, yc.shape[0] // 2), interpolation=cv2.INTER_AREA)
        vals.append(np.prod(np.maximum(np.array(parts), 1e-6) ** w[: len(parts)]))
    return float(np.mean(vals))


Perceptual = Callable[[np.ndarray, np.ndarray], float]


def lpips_alex(folder: str | Path | None = None, say: Callable[[str], None] | None = None) -> Perceptual | None:
    """LPIPS-Alex, the perceptual yardstick (``models/lpips.py``), as a function of two (H, W, 3) uint8
    images, when torch and its weights are present: a training install with the weights in ``folder``,
    else ``$HF_LPIPS_WEIGHTS``, else ``../shared/weights/lpips``. Otherwise None, after telling ``say``
    in one line what is missing (the benchmarks print it; ``hf-run eval`` just leaves the column out).
    The runtime itself never needs torch: this is only for reporting."""
    try:
        from ..models.lpips import ALEX, ENV, LPIPS, available, weights_dir
    except ImportError:
        if say:
            say("LPIPS-Alex skipped: torch is not installed (pip install -e .[train])")
        return None
    path = Path(folder) if folder else weights_dir()
    if not available("alex", path):
        if say:
            say(f"LPIPS-Alex skipped: {path} lacks {ALEX.features_file} or {ALEX.heads_file} (set {ENV} or --lpips)")
        return None
    return LPIPS("alex", folder=path).distance


def quality(original: np.ndarray, n_bytes: int, reconstruction: np.ndarray,
            perceptual: Perceptual | None = None) -> dict[str, float]:
    """Everything we report for one coded image; bpp is file bits ÷ original pixels. ``lpips`` only
    when a perceptual metric is given (see :func:`lpips_alex`)."""
    q = {"bpp": 8 * n_bytes / (original.shape[0] * original.shape[1]),
         "psnr": psnr(original, reconstruction), "ms_ssim": ms_ssim(original, reconstruction),
         "sharpness": sharpness_ratio(reconstruction, original),
         "sharpness_half": sharpness_ratio(reconstruction, original, scale=2)}
    if perceptual is not None:
        q["lpips"] = perceptual(original, reconstruction)
    return q


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of a histogram: the effective number of codes in use."""
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def sharpness(rgb: np.ndarray) -> float:
    """Mean squared Laplacian of the luma."""
    return float(np.mean(cv2.Laplacian(luma(rgb), cv2.CV_64F) ** 2))


def sharpness_ratio(reconstruction: np.ndarray, original: np.ndarray, scale: int = 1) -> float:
    """1.0 = as sharp as the original; < 1 blurrier; > 1 more high-frequency energy.

    ``scale=2`` compares both images after 2× area down-sampling. One-pixel patterns (line or
    checkerboard artefacts of a decoder) carry full-resolution Laplacian energy but vanish there,
    while real detail spans scales: a full-resolution ratio far above the half-resolution one means
    the "detail" is artefact."""
    if scale > 1:
        def down(im: np.ndarray) -> np.ndarray:
            h, w = max(1, im.shape[0] // scale), max(1, im.shape[1] // scale)
            return cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)

        reconstruction, original = down(reconstruction), down(original)
    return sharpness(reconstruction) / max(sharpness(original), 1e-12)
