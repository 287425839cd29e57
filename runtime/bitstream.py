"""The ``.hfc`` container: header, one ANS payload, CRC-32. See FORMAT.md (kept in sync with this)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .masking import SCHEDULES

MAGIC = b"HF"
FORMAT_VERSION = 1
STREAMS = ("hybrid", "vq", "continuous")
MAX_SIDE = 1 << 16
MAX_PIXELS = 1 << 28  # 268 MP: bounds what a (possibly forged) header can make the decoder allocate


class BitstreamError(ValueError):
    """The file is not a valid HybridFlow stream for this runtime (message says why)."""


@dataclass
class Header:
    stream: str  # one of STREAMS
    width: int
    height: int
    model_id: bytes  # 4 bytes: first bytes of the model's SHA-256
    schedules: list[int]  # per-tile schedule codes (empty for "continuous")

    @property
    def uniform(self) -> bool:
        return len(set(self.schedules)) <= 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 28:
            raise BitstreamError("truncated or malformed header")
        b = buf[pos]
        n |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return n, pos


def _pack3(codes: list[int]) -> bytes:
    bits = 0
    for k, c in enumerate(codes):
        bits |= c << (3 * k)
    return bits.to_bytes(-(-3 * len(codes) // 8), "little")


def _unpack3(data: bytes, n: int) -> list[int]:
    bits = int.from_bytes(data, "little")
    return [(bits >> (3 * k)) & 7 for k in range(n)]


def write(header: Header, words: np.ndarray) -> bytes:
    flags = STREAMS.index(header.stream)
    codes = header.schedules
    if header.stream != "continuous" and header.uniform:
        flags |= 0x4 | (codes[0] << 3)
    out = bytearray(MAGIC)
    out.append(FORMAT_VERSION)
    out += header.model_id
    out.append(flags)
    out += _varint(header.width) + _varint(header.height)
    if header.stream != "continuous" and not header.uniform:
        out += _pack3(codes)
    payload = words.astype("<u4").tobytes()
    strip = min(3, len(payload) - len(payload.rstrip(b"\0")))
    out += payload[: len(payload) - strip]
    out += zlib.crc32(out).to_bytes(4, "little")
    return bytes(out)


def read(data: bytes, n_tiles_of) -> tuple[Header, np.ndarray, int]:  # noqa: ANN001
    """Parse and verify. ``n_tiles_of(width, height)`` gives the tile count. Returns the header, the
    payload words and the header size in bytes."""
    if len(data) < 2 or data[:2] != MAGIC:
        raise BitstreamError("not a HybridFlow stream (bad magic)")
    if len(data) < 13:
        raise BitstreamError("truncated stream")
    if data[2] != FORMAT_VERSION:
        raise BitstreamError(f"stream format version {data[2]} is not supported (this runtime reads {FORMAT_VERSION})")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise BitstreamError("checksum mismatch: the stream is corrupted or truncated")
    model_id, flags = bytes(data[3:7]), data[7]
    if flags & 3 >= len(STREAMS) or flags >> 6:
        raise BitstreamError("invalid stream flags")
    stream = STREAMS[flags & 3]
    width, pos = _read_varint(data, 8)
    height, pos = _read_varint(data, pos)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
        raise BitstreamError(f"invalid image size {width}×{height}")
    n_tiles = n_tiles_of(width, height)
    schedules: list[int] = []
    if stream != "continuous":
        if flags & 0x4:
            schedules = [(flags >> 3) & 7] * n_tiles
        else:
            nbytes = -(-3 * n_tiles // 8)
            if pos + nbytes > len(data) - 4:
                raise BitstreamError("truncated schedule table")
            schedules = _unpack3(data[pos : pos + nbytes], n_tiles)
            pos += nbytes
        if any(c >= len(SCHEDULES) for c in schedules):
            raise BitstreamError("invalid mask schedule code")
    payload = bytes(data[pos:-4])
    payload += b"\0" * (-len(payload) % 4)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    return Header(stream, width, height, model_id, schedules), words, pos + 4
