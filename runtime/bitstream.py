"""The ``.hfc`` container: header, one ANS payload, CRC-32. See FORMAT.md (kept in sync with this).

Parsing is strict so that every stream has exactly one encoding and a forged header cannot make the
decoder work or allocate beyond what the file pays for: canonical varints, reserved bits zero, every
length checked against the bytes before the CRC, and a minimum payload per tile."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .masking import SCHEDULES
from .streams import STREAMS, StreamKind, stream_kind
from .tiling import TileGrid

MAGIC = b"HF"
FORMAT_VERSION = 3  # 3: rate point byte; 2: payload ends with ≥ 1 terminator, minimum payload per tile, strict header
MAX_RATE = 255  # the rate point is one byte (a model has at most MAX_RATE + 1 points)
MAX_SIDE = 1 << 16
MAX_PIXELS = 1 << 28  # 268 MP: bounds what a (possibly forged) header can make the decoder allocate
MAX_VARINT_BYTES = 3  # enough for MAX_SIDE
CRC_BYTES = 4


class BitstreamError(ValueError):
    """The file is not a valid HybridFlow stream for this runtime (message says why)."""


@dataclass
class Header:
    stream: str  # one of STREAMS
    width: int
    height: int
    model_id: bytes  # 4 bytes: first bytes of the model's SHA-256
    schedules: list[int]  # per-tile schedule codes (empty when the kind carries no tokens)
    rate: int  # rate point of the continuous stream (Model.rate_points); a vq stream carries the model's base point

    @property
    def kind(self) -> StreamKind:
        return stream_kind(self.stream)

    @property
    def uniform(self) -> bool:
        return len(set(self.schedules)) <= 1

    @property
    def n_tiles(self) -> int:
        return TileGrid(self.height, self.width).count


def min_payload_bytes(stream: str, n_tiles: int) -> int:
    return stream_kind(stream).min_payload_per_tile * n_tiles


def stored_payload(words: np.ndarray) -> bytes:
    """The payload bytes as written: u32 LE words, up to 3 trailing zero bytes stripped."""
    payload = np.asarray(words).astype("<u4").tobytes()
    strip = min(3, len(payload) - len(payload.rstrip(b"\0")))
    return payload[: len(payload) - strip]


def payload_shortfall(header: Header, words: np.ndarray) -> int:
    """Bytes missing to the per-tile minimum (≤ 0 when the payload is long enough)."""
    return min_payload_bytes(header.stream, header.n_tiles) - len(stored_payload(words))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pack3(codes: list[int]) -> bytes:
    bits = 0
    for k, c in enumerate(codes):
        bits |= c << (3 * k)
    return bits.to_bytes(-(-3 * len(codes) // 8), "little")


def _check_header(header: Header) -> None:
    """What the writer refuses is exactly what the reader refuses: no stream it cannot read back."""
    if header.stream not in STREAMS:
        raise ValueError(f"unknown stream {header.stream!r}")
    if not (0 < header.width <= MAX_SIDE and 0 < header.height <= MAX_SIDE
            and header.width * header.height <= MAX_PIXELS):
        raise ValueError(f"unsupported image size {header.width}×{header.height}")
    if len(header.model_id) != 4:
        raise ValueError("model id must be 4 bytes")
    if isinstance(header.rate, bool) or not isinstance(header.rate, int) or not 0 <= header.rate <= MAX_RATE:
        raise ValueError(f"rate point must be an integer in 0…{MAX_RATE}, got {header.rate!r}")
    expected = header.n_tiles if header.kind.tokens else 0
    if len(header.schedules) != expected or any(not 0 <= c < len(SCHEDULES) for c in header.schedules):
        raise ValueError(f"{header.stream} stream needs {expected} schedule codes in 0…{len(SCHEDULES) - 1}")


def write(header: Header, words: np.ndarray) -> bytes:
    _check_header(header)
    payload = stored_payload(words)
    if len(payload) < min_payload_bytes(header.stream, header.n_tiles):
        raise ValueError("payload below the per-tile minimum: pad it with terminators (Codec.entropy_code)")
    flags = STREAMS.index(header.stream)
    codes = header.schedules
    if header.kind.tokens and header.uniform:
        flags |= 0x4 | (codes[0] << 3)
    out = bytearray(MAGIC)
    out.append(FORMAT_VERSION)
    out += header.model_id
    out.append(flags)
    out.append(header.rate)
    out += _varint(header.width) + _varint(header.height)
    if header.kind.tokens and not header.uniform:
        out += _pack3(codes)
    out += payload
    out += zlib.crc32(out).to_bytes(CRC_BYTES, "little")
    return bytes(out)


class _Reader:
    """Bounds-checked cursor over the bytes before the CRC."""

    def __init__(self, body: bytes, pos: int):
        self.body, self.pos = body, pos

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.body):
            raise BitstreamError(f"truncated stream: {what} runs into the checksum")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self, what: str) -> int:
        """Canonical LEB128 only: at most MAX_VARINT_BYTES, no redundant high zero byte."""
        n = 0
        for k in range(MAX_VARINT_BYTES):
            b = self.take(1, what)[0]
            n |= (b & 0x7F) << (7 * k)
            if not b & 0x80:
                if k and b == 0:
                    raise BitstreamError(f"malformed header: non-canonical {what}")
                return n
        raise BitstreamError(f"malformed header: {what} longer than {MAX_VARINT_BYTES} bytes")


def _parse_flags(flags: int) -> tuple[str, int | None]:
    """(stream, uniform schedule code or None for a per-tile table); reserved bits must be zero."""
    if flags >> 6 or flags & 3 >= len(STREAMS):
        raise BitstreamError("invalid stream flags")
    stream = STREAMS[flags & 3]
    uniform, code = bool(flags & 0x4), (flags >> 3) & 7
    if not stream_kind(stream).tokens and flags & 0x3C:
        raise BitstreamError(f"invalid stream flags: a {stream} stream has no schedule")
    if stream_kind(stream).tokens and not uniform and code:
        raise BitstreamError("invalid stream flags: schedule bits set without the uniform bit")
    if uniform and code >= len(SCHEDULES):
        raise BitstreamError("invalid mask schedule code")
    return stream, code if uniform else None


def _schedule_table(r: _Reader, n_tiles: int) -> list[int]:
    raw = r.take(-(-3 * n_tiles // 8), "schedule table")
    bits = int.from_bytes(raw, "little")
    if bits >> (3 * n_tiles):
        raise BitstreamError("malformed schedule table: padding bits set")
    codes = [(bits >> (3 * k)) & 7 for k in range(n_tiles)]
    if any(c >= len(SCHEDULES) for c in codes):
        raise BitstreamError("invalid mask schedule code")
    if len(set(codes)) <= 1:
        raise BitstreamError("malformed header: a one-schedule table must use the uniform flag")
    return codes


def _check_payload(payload: bytes, stream: str, n_tiles: int) -> None:
    # An ANS payload never ends in a zero word and the writer strips up to 3 trailing zero bytes, so
    # a stored payload ends in a non-zero byte.
    if payload and payload[-1] == 0:
        raise BitstreamError("malformed payload: trailing zero bytes")
    if len(payload) < min_payload_bytes(stream, n_tiles):
        raise BitstreamError(f"corrupt stream: {len(payload)} payload bytes cannot pay for {n_tiles} {stream} "
                             f"tiles (at least {stream_kind(stream).min_payload_per_tile} bytes per tile)")


def read(data: bytes) -> tuple[Header, np.ndarray, int]:
    """Parse and verify. Returns the header, the payload words and the header size in bytes
    (including the CRC). Raises BitstreamError before any work the payload does not pay for."""
    data = bytes(data)
    if len(data) < 2 or data[:2] != MAGIC:
        raise BitstreamError("not a HybridFlow stream (bad magic)")
    if len(data) >= 3 and data[2] != FORMAT_VERSION:
        why = (" (format 2 had no rate point: decode it with the runtime and model that wrote it)"
               if data[2] == 2 else "")
        raise BitstreamError(f"stream format version {data[2]} is not supported (this runtime reads "
                             f"{FORMAT_VERSION}){why}")
    if len(data) < 9 + 2 + CRC_BYTES:
        raise BitstreamError("truncated stream")
    if zlib.crc32(data[:-CRC_BYTES]) != int.from_bytes(data[-CRC_BYTES:], "little"):
        raise BitstreamError("checksum mismatch: the stream is corrupted or truncated")
    r = _Reader(data[:-CRC_BYTES], 3)
    model_id = r.take(4, "model id")
    stream, uniform_code = _parse_flags(r.take(1, "flags")[0])
    rate = r.take(1, "rate point")[0]  # its range depends on the model: Codec.read_header checks it
    width, height = r.varint("width"), r.varint("height")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
        raise BitstreamError(f"invalid image size {width}×{height}")
    n_tiles = TileGrid(height, width).count
    schedules: list[int] = []
    if stream_kind(stream).tokens:
        schedules = [uniform_code] * n_tiles if uniform_code is not None else _schedule_table(r, n_tiles)
    payload = r.body[r.pos :]
    _check_payload(payload, stream, n_tiles)
    words = np.frombuffer(payload + b"\0" * (-len(payload) % 4), dtype="<u4").astype(np.uint32)
    return Header(stream, width, height, model_id, schedules, rate), words, r.pos + CRC_BYTES
