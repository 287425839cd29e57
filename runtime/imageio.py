"""Reading images into RGB uint8 and writing files atomically (OpenCV, no Pillow needed).

Policy, as documented in the README:
- The size comes from the file's header (``imageprobe``) and is checked against the codec's limits
  *before* decoding: a small file cannot make us allocate a huge image.
- EXIF orientation is applied (OpenCV's default for JPEG).
- Greyscale becomes RGB; 16-bit images are scaled to 8 bits (÷257, rounded); float images are taken
  as [0, 1]; CMYK JPEG is converted. Of an animated GIF/WebP or a multi-page TIFF only the first
  frame is used, with a warning.
- Alpha is *dropped* (the colour channels are kept as stored) and a warning is returned.

Writes go to a temporary file in the target folder, which then becomes the output in one step:
by ``rename`` when overwriting is allowed, by ``link`` (fails if the name exists, so two concurrent
writers cannot both win) when it is not. New files get the mode the umask gives (mkstemp alone makes
0600); a replaced file keeps its mode."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .bitstream import MAX_PIXELS, MAX_SIDE
from .imageprobe import ImageInfo, ProbeError, probe

WRITABLE = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm"}
READABLE = WRITABLE | {".jpe", ".pgm", ".pnm"}  # what a directory listing treats as images
SUFFIX = ".hfc"  # file name extension of a compressed stream
_BLOCK_VALUES = 1 << 22  # samples converted per step, so a conversion needs little memory beyond its output

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # failures are reported as exceptions


class ImageReadError(ValueError):
    pass


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
    try:
        info = probe(data)
    except ProbeError as e:
        raise ImageReadError(f"{name} is not an image this runtime reads ({e})") from None
    _check_size(info, name)
    img = _decode(data)
    if img is None or img.size == 0:
        raise ImageReadError(f"{name} is not an image OpenCV can decode (corrupt {info.format} data)")
    if img.shape[0] * img.shape[1] > info.pixels:
        raise ImageReadError(f"{name}: decodes to more pixels than its {info.format} header declares")
    warnings = _warnings(info, img.dtype)
    return _to_rgb8(img), warnings


def _check_size(info: ImageInfo, name: str) -> None:
    if not (0 < info.width <= MAX_SIDE and 0 < info.height <= MAX_SIDE and info.pixels <= MAX_PIXELS):
        raise ImageReadError(f"{name}: {info.format} header declares {info.width}×{info.height}, beyond what "
                             f"this codec accepts (1…{MAX_SIDE} per side, at most {MAX_PIXELS} pixels); "
                             "refused before decoding")


def _decode(data: bytes) -> np.ndarray | None:
    """(H, W, 3) BGR in the file's depth, or None. Some files (single-channel float TIFF) only open
    unchanged; they are brought to three channels here."""
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is not None:
        return img
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is None or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        return None
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    return img[:, :, :3] if img.shape[2] == 4 else img


def _warnings(info: ImageInfo, dtype: np.dtype) -> list[str]:
    out = []
    if dtype == np.uint16:
        out.append("16-bit image converted to 8 bits")
    elif dtype != np.uint8:
        kind = "float" if np.issubdtype(dtype, np.floating) else str(dtype)
        out.append(f"{8 * dtype.itemsize}-bit {kind} {info.format} converted to 8 bits (values assumed in [0, 1])")
    if info.alpha:
        out.append("alpha channel dropped")
    if info.frames > 1:
        what = "multi-page TIFF: only the first page" if info.format == "TIFF" else \
            f"animated {info.format}: only the first frame"
        out.append(f"{what} is used")
    return out


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any depth → uint8 RGB, converting a block of rows at a time (peak memory ≈ input + output)."""
    if img.dtype != np.uint8:
        out = np.empty(img.shape, np.uint8)
        step = max(1, _BLOCK_VALUES // (img.shape[1] * img.shape[2]))
        for r in range(0, img.shape[0], step):
            block = img[r : r + step]
            if block.dtype == np.uint16:
                out[r : r + step] = (block.astype(np.uint32) + 128) // 257
            else:
                out[r : r + step] = np.clip(np.nan_to_num(block.astype(np.float64)) * 255 + 0.5, 0, 255)
        img = out
    img = np.ascontiguousarray(img)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


def write_bytes_atomic(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Readers never see a partial file. ``overwrite=False`` creates ``path`` exclusively: if it
    exists (or another writer creates it first) FileExistsError is raised and nothing is changed."""
    path = Path(path)
    mode = _new_mode(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusive(Path(tmp), path, data, mode)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask would race threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_mode(path: Path, overwrite: bool) -> int:
    if overwrite:
        try:
            return stat.S_IMODE(path.stat().st_mode)  # a replaced file keeps its permissions
        except FileNotFoundError:
            pass
    return 0o666 & ~_umask()


def _link_exclusive(tmp: Path, path: Path, data: bytes, mode: int) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
    except OSError as e:  # filesystems without hard links: O_EXCL still makes the creation exclusive
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def encode_image(rgb: np.ndarray, suffix: str) -> bytes:
    suffix = suffix.lower()
    if suffix not in WRITABLE:
        raise ValueError(f"cannot write {suffix or 'extension-less'} images; use one of {', '.join(sorted(WRITABLE))}")
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {suffix} image")
    return buf.tobytes()


def write_image(path: Path, rgb: np.ndarray, overwrite: bool = True) -> None:
    write_bytes_atomic(path, encode_image(rgb, Path(path).suffix), overwrite)
