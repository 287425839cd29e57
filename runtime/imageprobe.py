"""What an image file says about itself before it is decoded: format, size, frames, alpha, samples.

Why: a 1.5 MB PNG can declare 16000×16000 16-bit pixels, and OpenCV allocates all of it before
anyone can check the size (4.6 GB resident). Reading the header first lets ``imageio`` refuse an
oversized image without allocating it, and gives honest warnings (animated, float, alpha) without
decoding the file twice. Only the formats the README promises are parsed; anything else is refused.
Every parser reads within ``data`` and raises ``ProbeError`` on a truncated or malformed header."""

from __future__ import annotations

import struct
from dataclasses import dataclass


class ProbeError(ValueError):
    pass


@dataclass(frozen=True)
class ImageInfo:
    format: str  # PNG, JPEG, WebP, TIFF, BMP, GIF, PNM
    width: int
    height: int
    frames: int = 1  # > 1: animated (or multi-page TIFF); only the first is decoded
    alpha: bool = False
    float_samples: bool = False  # TIFF SampleFormat 3: floating point

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _unpack(fmt: str, data: bytes, pos: int) -> tuple:
    if pos < 0 or pos + struct.calcsize(fmt) > len(data):
        raise ProbeError("truncated header")
    return struct.unpack_from(fmt, data, pos)


def _png(data: bytes) -> ImageInfo:
    length, kind, width, height, _depth, colour = _unpack(">I4sIIBB", data, 8)
    if kind != b"IHDR" or length != 13:
        raise ProbeError("PNG without an IHDR chunk")
    frames, alpha, pos = 1, colour in (4, 6), 8
    while pos + 8 <= len(data):  # chunks before the image data: animation control, transparency
        length, kind = _unpack(">I4s", data, pos)
        if kind == b"IDAT":
            break
        if kind == b"acTL":
            frames = max(1, _unpack(">I", data, pos + 8)[0])
        alpha |= kind == b"tRNS"
        pos += 12 + length
    return ImageInfo("PNG", width, height, frames, alpha)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageInfo:
    pos = 2
    while True:
        while _unpack("B", data, pos)[0] != 0xFF:  # tolerate stray bytes between segments
            pos += 1
        while _unpack("B", data, pos)[0] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
            continue
        if marker in (0xD9, 0xDA):
            raise ProbeError("JPEG without a frame header")
        (length,) = _unpack(">H", data, pos)
        if marker in _SOF:
            height, width = _unpack(">xHH", data, pos + 2)
            return ImageInfo("JPEG", width, height)
        pos += length


def _webp(data: bytes) -> ImageInfo:
    kind = data[12:16]
    if kind == b"VP8X":
        flags, w1, w2, h1, h2 = _unpack("<B3xHBHB", data, 20)
        animated = bool(flags & 0x02)
        return ImageInfo("WebP", 1 + (w1 | w2 << 16), 1 + (h1 | h2 << 16), 2 if animated else 1, bool(flags & 0x10))
    if kind == b"VP8L":
        signature, bits = _unpack("<BI", data, 20)
        if signature != 0x2F:
            raise ProbeError("bad VP8L signature")
        return ImageInfo("WebP", 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF), 1, bool(bits >> 28 & 1))
    if kind == b"VP8 ":
        start, width, height = _unpack("<3sHH", data, 23)
        if start != b"\x9d\x01\x2a":
            raise ProbeError("bad VP8 start code")
        return ImageInfo("WebP", width & 0x3FFF, height & 0x3FFF)
    raise ProbeError("unknown WebP chunk")


_TIFF_TYPES = {3: "H", 4: "I"}  # SHORT, LONG: the types sizes and sample formats come in


def _tiff(data: bytes) -> ImageInfo:
    e = "<" if data[:2] == b"II" else ">"
    if _unpack(e + "H", data, 2)[0] != 42:
        raise ProbeError("not a classic TIFF (BigTIFF is not supported)")
    (ifd,) = _unpack(e + "I", data, 4)
    (count,) = _unpack(e + "H", data, ifd)
    tags: dict[int, int] = {}
    for k in range(count):
        tag, typ, n = _unpack(e + "HHI", data, ifd + 2 + 12 * k)
        if typ in _TIFF_TYPES and n >= 1:
            tags[tag] = _unpack(e + _TIFF_TYPES[typ], data, ifd + 10 + 12 * k)[0]
        elif tag in (256, 257):
            raise ProbeError("TIFF size tag of an unexpected type")
    (next_ifd,) = _unpack(e + "I", data, ifd + 2 + 12 * count)
    if 256 not in tags or 257 not in tags:
        raise ProbeError("TIFF without image size")
    alpha = 338 in tags or tags.get(277, 1) in (2, 4)  # ExtraSamples, or grey/RGB + one more sample
    return ImageInfo("TIFF", tags[256], tags[257], 2 if next_ifd else 1, alpha, tags.get(339) == 3)


def _bmp(data: bytes) -> ImageInfo:
    (size,) = _unpack("<I", data, 14)
    if size == 12:
        width, height = _unpack("<HH", data, 18)
    else:
        width, height = _unpack("<ii", data, 18)
    return ImageInfo("BMP", abs(width), abs(height))


def _gif(data: bytes) -> ImageInfo:
    width, height, flags = _unpack("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while frames < 2:  # walk the blocks until a second image (animated) or the end
        (block,) = _unpack("B", data, pos)
        if block == 0x3B:
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor (+ local colour table), LZW code size, sub-blocks
            frames += 1
            (local,) = _unpack("B", data, pos + 9)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            raise ProbeError("malformed GIF block")
        while (n := _unpack("B", data, pos)[0]) != 0:
            pos += 1 + n
        pos += 1
    return ImageInfo("GIF", width, height, max(frames, 1))


def _pnm(data: bytes) -> ImageInfo:
    fields: list[int] = []
    pos = 2
    while len(fields) < 2:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos] not in b"\r\n":
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ProbeError("malformed PNM header")
        fields.append(int(data[start:pos]))
    return ImageInfo("PNM", fields[0], fields[1])


def probe(data: bytes) -> ImageInfo:
    """Header facts of a PNG, JPEG, WebP, TIFF, BMP, GIF or PNM file; ProbeError for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] in (b"II", b"MM"):
        return _tiff(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return _pnm(data)
    raise ProbeError("not a PNG, JPEG, WebP, TIFF, BMP, GIF or PNM file")
