import zlib

import numpy as np
import pytest

from hybridflow.runtime import bitstream
from hybridflow.runtime.bitstream import BitstreamError, Header
from hybridflow.runtime.streams import STREAMS, stream_kind


def tiles_of(w: int, h: int) -> int:
    return -(-w // 256) * -(-h // 256)


def words_for(stream: str, n_tiles: int, seed: int = 0) -> np.ndarray:
    """Random non-zero words, enough to pass the per-tile payload minimum."""
    n = -(-stream_kind(stream).min_payload_per_tile * n_tiles // 4) + 1
    return np.random.default_rng(seed).integers(1, 2**32, n, dtype=np.uint64).astype(np.uint32) | 1 << 24


def signed(body: bytes | bytearray) -> bytes:
    return bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little")


def stored(words: np.ndarray) -> bytes:
    return bitstream.stored_payload(words)


def roundtrip(header: Header, words: np.ndarray) -> tuple[Header, np.ndarray, int]:
    return bitstream.read(bitstream.write(header, words))


@pytest.mark.parametrize("stream", STREAMS)
def test_round_trip_uniform_and_mixed(stream: str) -> None:
    n = tiles_of(1000, 700)
    words = words_for(stream, n)
    for schedules, rate in (([2] * n, 0), ([k % 6 for k in range(n)], 255)):
        sched = schedules if stream_kind(stream).tokens else []
        h, w, _ = roundtrip(Header(stream, 1000, 700, b"abcd", sched, rate), words)
        assert (h.stream, h.width, h.height, h.model_id, h.schedules, h.rate) == (stream, 1000, 700, b"abcd", sched,
                                                                                  rate)
        np.testing.assert_array_equal(w, words)


def test_header_is_small() -> None:
    words = words_for("hybrid", 4)
    data = bitstream.write(Header("hybrid", 512, 512, b"abcd", [2] * 4, 0), words)
    assert len(data) - 4 * words.size <= 17


def test_trailing_zero_bytes_are_restored() -> None:
    words = np.concatenate([words_for("vq", 1), np.array([0x00000100], np.uint32)])
    data = bitstream.write(Header("vq", 10, 10, b"abcd", [0], 0), words)
    assert len(data) == 15 + 4 * words.size - 2  # magic, version, id, flags, rate, 2 varints, CRC; 2 zeros stripped
    _, got, _ = bitstream.read(data)
    np.testing.assert_array_equal(got, words)


def test_refuses_other_version_magic_and_corruption() -> None:
    data = bytearray(bitstream.write(Header("hybrid", 300, 200, b"abcd", [1, 2], 0), words_for("hybrid", 2)))
    bad_version = bytearray(data)
    bad_version[2] = 1
    with pytest.raises(BitstreamError, match="version 1 is not supported"):
        bitstream.read(bytes(bad_version))
    with pytest.raises(BitstreamError, match="magic"):
        bitstream.read(b"\xff\xd8\xff\xe0" + bytes(data[4:]))
    for pos in (3, 9, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        with pytest.raises(BitstreamError):
            bitstream.read(bytes(flipped))
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            bitstream.read(bytes(data[:cut]))


def head(flags: int, size: bytes, rate: int = 0) -> bytearray:
    return bytearray(b"HF" + bytes([bitstream.FORMAT_VERSION]) + b"abcd" + bytes([flags, rate]) + size)


def test_varints_cannot_run_into_the_checksum() -> None:
    """Issue 21.3: a 13-byte stream without a height field decoded as 1×44."""
    with pytest.raises(BitstreamError, match="truncated|runs into the checksum"):
        bitstream.read(signed(head(2, b"\x01")))
    with pytest.raises(BitstreamError, match="runs into the checksum"):
        bitstream.read(signed(head(2, b"\x01\x80")))


@pytest.mark.parametrize(("size", "what"), [(b"\x81\x00\x01", "non-canonical width"),
                                            (b"\x01\x81\x80\x00", "non-canonical height"),
                                            (b"\x80\x80\x80\x01\x01", "longer than 3 bytes")])
def test_non_canonical_varints_are_refused(size: bytes, what: str) -> None:
    body = head(2, size) + bytes(words_for("continuous", 1).astype("<u4").tobytes())
    with pytest.raises(BitstreamError, match=what):
        bitstream.read(signed(body))


@pytest.mark.parametrize("flags", [0x40, 0x80, 2 | 0x4, 2 | 0x8, 0 | 0x8, 1 | 0x4 | (6 << 3), 3])
def test_reserved_and_invalid_flag_bits_are_refused(flags: int) -> None:
    body = head(flags, b"\x01\x01") + bytes(words_for("hybrid", 1).astype("<u4").tobytes())
    with pytest.raises(BitstreamError, match="flags|schedule"):
        bitstream.read(signed(body))


def test_schedule_table_is_canonical() -> None:
    words = bytes(words_for("vq", 3).astype("<u4").tobytes())
    size = b"\x80\x06\x01"  # 768×1: 3 tiles, 9 bits of table → 2 bytes
    good = head(1, size) + bytes([2 | 3 << 3 | (4 << 6) & 0xFF, 4 >> 2]) + words
    assert bitstream.read(signed(good))[0].schedules == [2, 3, 4]
    padding_bit = head(1, size) + bytes([2 | 3 << 3 | (4 << 6) & 0xFF, (4 >> 2) | 0x80]) + words
    with pytest.raises(BitstreamError, match="padding bits"):
        bitstream.read(signed(padding_bit))
    one_schedule = head(1, size) + bytes([2 | 2 << 3 | (2 << 6) & 0xFF, 2 >> 2]) + words
    with pytest.raises(BitstreamError, match="uniform flag"):
        bitstream.read(signed(one_schedule))
    bad_code = head(1, size) + bytes([7 | 2 << 3, 0]) + words
    with pytest.raises(BitstreamError, match="schedule code"):
        bitstream.read(signed(bad_code))
    with pytest.raises(BitstreamError, match="schedule table runs into the checksum"):
        bitstream.read(signed(head(1, size) + b"\x02"))


def test_trailing_zero_payload_bytes_are_not_canonical() -> None:
    """An ANS payload never ends in a zero word; the fuzzer found one that made constriction raise
    a plain ValueError (a whole zero word stored as one zero byte)."""
    data = bitstream.write(Header("continuous", 16, 16, b"abcd", [], 0), words_for("continuous", 1))
    for tail in (b"\0", b"\0\0", b"\0\0\0", b"\0\0\0\0\0"):
        with pytest.raises(BitstreamError, match="trailing zero"):
            bitstream.read(signed(data[:-4] + tail))


@pytest.mark.parametrize("stream", STREAMS)
def test_every_tile_must_be_paid_for(stream: str) -> None:
    """Issue 21.1: a 17-byte vq stream declared 65535×4096, all masked, and kept the decoder busy
    for 35 minutes. The payload must carry StreamKind.min_payload_per_tile bytes for each declared tile."""
    sched = [5] * tiles_of(65535, 4096) if stream_kind(stream).tokens else []
    words = words_for(stream, 1)
    flags = STREAMS.index(stream) | (0x4 | 5 << 3 if stream_kind(stream).tokens else 0)
    forged = head(flags, bitstream._varint(65535) + bitstream._varint(4096)) + stored(words)
    with pytest.raises(BitstreamError, match="cannot pay for 4096"):
        bitstream.read(signed(forged))
    with pytest.raises(ValueError, match="per-tile minimum"):
        bitstream.write(Header(stream, 65535, 4096, b"abcd", sched, 0), words)
    assert bitstream.read(bitstream.write(Header(stream, 256, 256, b"abcd", sched[:1], 0), words))[0].width == 256


@pytest.mark.parametrize(("stream", "most"), [("hybrid", 7), ("vq", 15), ("continuous", 25)])
def test_tiles_in_one_kilobyte(stream: str, most: int) -> None:
    """FORMAT.md's bound on decode work: the largest tile count a valid stream of ≤ 1 KB can declare
    (the smallest payload each tile must pay for, in the cheapest header: a row of tiles 256 px high)."""
    def smallest(tiles: int) -> int:
        words = words_for(stream, tiles)
        payload = stored(words)[: stream_kind(stream).min_payload_per_tile * tiles]
        header = Header(stream, 256 * tiles, 256, b"abcd", [5] * tiles if stream_kind(stream).tokens else [], 0)
        return len(bitstream.write(header, words)) - len(stored(words)) + len(payload)

    assert smallest(most) <= 1024 < smallest(most + 1)


def test_writer_refuses_what_the_reader_refuses() -> None:
    words = words_for("hybrid", 2)
    for bad in (Header("hybrid", 300, 200, b"abcd", [1], 0), Header("hybrid", 300, 200, b"abc", [1, 1], 0),
                Header("hybrid", 0, 200, b"abcd", [], 0), Header("vq", 300, 200, b"abcd", [6, 1], 0),
                Header("continuous", 300, 200, b"abcd", [1, 1], 0), Header("hybrid", 300, 200, b"abcd", [1, 1], 256),
                Header("hybrid", 300, 200, b"abcd", [1, 1], -1), Header("hybrid", 300, 200, b"abcd", [1, 1], True)):
        with pytest.raises(ValueError):
            bitstream.write(bad, words)


def test_rate_point_byte() -> None:
    """Format 3: one byte after the flags, any value 0…255 at this level (the codec checks it against its
    model); the header grows by exactly that byte; a format-2 stream is refused with a message saying why."""
    words = words_for("hybrid", 2)
    for rate in (0, 1, 7, 255):
        data = bitstream.write(Header("hybrid", 300, 200, b"abcd", [1, 1], rate), words)
        assert data[8] == rate and bitstream.read(data)[0].rate == rate
    body = head(2, b"\x10\x10", rate=200) + stored(words_for("continuous", 1))
    assert bitstream.read(signed(body))[0].rate == 200
    old = bytearray(bitstream.write(Header("hybrid", 300, 200, b"abcd", [1, 1], 0), words))
    old[2] = 2
    with pytest.raises(BitstreamError, match="version 2 is not supported.*no rate point"):
        bitstream.read(signed(old[:-4]))
