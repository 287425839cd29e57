"""Classic codecs reachable from Python, each as (name, quality settings, encode, decode).

Settings are chosen to cover HybridFlow's range (≈ 0.02–0.12 bpp) as far as each codec can reach;
points outside the range are still measured and reported, never extrapolated."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Baseline:
    name: str
    settings: list[float]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]


def _pil_encode(fmt: str, **kw: object) -> Callable[[np.ndarray, float], bytes]:
    def enc(rgb: np.ndarray, q: float) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, quality=int(q), **kw)
        return buf.getvalue()

    return enc


def _pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _heic_encode(rgb: np.ndarray, q: float) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_bytes("RGB", (rgb.shape[1], rgb.shape[0]), rgb.tobytes()).save(buf, quality=int(q))
    return buf.getvalue()


def _heic_decode(data: bytes) -> np.ndarray:
    import pillow_heif

    f = pillow_heif.open_heif(io.BytesIO(data))
    return np.asarray(f.to_pillow().convert("RGB"))


def _jxl_encode(rgb: np.ndarray, d: float) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(rgb, distance=d, effort=7))


def _jxl_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(data))[..., :3]


def available() -> list[Baseline]:
    out = []
    try:
        from PIL import features

        if features.check("avif"):
            out.append(Baseline("AVIF", [0, 2, 5, 10, 16, 24], _pil_encode("AVIF", speed=6), _pil_decode))
        if features.check("webp"):
            out.append(Baseline("WebP", [0, 2, 5, 10, 20], _pil_encode("WEBP", method=6), _pil_decode))
        out.append(Baseline("JPEG", [1, 3, 5], _pil_encode("JPEG"), _pil_decode))
    except ImportError:
        pass
    try:
        import pillow_heif  # noqa: F401

        out.append(Baseline("HEIC (x265)", [0, 3, 8, 15, 25], _heic_encode, _heic_decode))
    except ImportError:
        pass
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available:
            out.append(Baseline("JPEG XL", [25, 15, 10, 7, 5], _jxl_encode, _jxl_decode))
    except ImportError:
        pass
    return out
