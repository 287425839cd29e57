"""Reading images into RGB uint8 and writing files atomically (OpenCV, no Pillow needed).

Policy, as documented in the README:
- EXIF orientation is applied (OpenCV's default for JPEG).
- Greyscale becomes RGB; 16-bit images are scaled to 8 bits (÷257, rounded); CMYK JPEG is converted.
- Alpha is *dropped* (the colour channels are kept as stored) and a warning is returned."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

WRITABLE = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm"}
READABLE = WRITABLE | {".jpe", ".pgm", ".pnm"}  # what a directory listing treats as images
SUFFIX = ".hfc"  # file name extension of a compressed stream


class ImageReadError(ValueError):
    pass


def _has_alpha(data: bytes) -> bool:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25:
        return data[25] in (4, 6) or b"tRNS" in data[:4096]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" or data[:2] in (b"II", b"MM"):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        return img is not None and img.ndim == 3 and img.shape[2] == 4
    return False


def read_image(path: Path | str) -> tuple[np.ndarray, list[str]]:
    """Returns (RGB uint8 array, warnings). Raises ImageReadError with a one-line reason."""
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e.strerror}") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> tuple[np.ndarray, list[str]]:
    """``read_image`` for bytes already in memory (files on remote filesystems); ``name`` goes into
    the error messages. Same policy, so the same file gives the same pixels either way."""
    if not data:
        raise ImageReadError(f"{name} is empty")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None or img.size == 0:
        raise ImageReadError(f"{name} is not an image OpenCV can decode")
    warnings = []
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
        warnings.append("16-bit image converted to 8 bits")
    elif img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img.astype(np.float64)) * 255 + 0.5, 0, 255).astype(np.uint8)
        warnings.append(f"{img.dtype} image converted to 8 bits (values assumed in [0, 1])")
    if _has_alpha(data):
        warnings.append("alpha channel dropped")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), warnings


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_image(rgb: np.ndarray, suffix: str) -> bytes:
    suffix = suffix.lower()
    if suffix not in WRITABLE:
        raise ValueError(f"cannot write {suffix or 'extension-less'} images; use one of {', '.join(sorted(WRITABLE))}")
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {suffix} image")
    return buf.tobytes()


def write_image(path: Path, rgb: np.ndarray) -> None:
    write_bytes_atomic(path, encode_image(rgb, Path(path).suffix))
