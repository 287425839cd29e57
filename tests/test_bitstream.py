import numpy as np
import pytest

from hybridflow.runtime import bitstream
from hybridflow.runtime.bitstream import BitstreamError, Header


def tiles_of(w: int, h: int) -> int:
    return -(-w // 256) * -(-h // 256)


def roundtrip(header: Header, words: np.ndarray) -> tuple[Header, np.ndarray, int]:
    return bitstream.read(bitstream.write(header, words), tiles_of)


@pytest.mark.parametrize("stream", bitstream.STREAMS)
def test_round_trip_uniform_and_mixed(stream: str) -> None:
    words = np.array([0xDEADBEEF, 7, 0x100], np.uint32)
    n = tiles_of(1000, 700)
    for schedules in ([2] * n, [k % 6 for k in range(n)]):
        sched = [] if stream == "continuous" else schedules
        h, w, _ = roundtrip(Header(stream, 1000, 700, b"abcd", sched), words)
        assert (h.stream, h.width, h.height, h.model_id, h.schedules) == (stream, 1000, 700, b"abcd", sched)
        np.testing.assert_array_equal(w, words)


def test_header_is_small() -> None:
    data = bitstream.write(Header("hybrid", 512, 512, b"abcd", [2] * 4), np.zeros(0, np.uint32))
    assert len(data) <= 16


def test_trailing_zero_bytes_are_restored() -> None:
    words = np.array([5, 0x00000100], np.uint32)
    data = bitstream.write(Header("vq", 10, 10, b"abcd", [0]), words)
    _, got, _ = bitstream.read(data, tiles_of)
    np.testing.assert_array_equal(got, words)


def test_refuses_other_version_magic_and_corruption() -> None:
    data = bytearray(bitstream.write(Header("hybrid", 300, 200, b"abcd", [1, 2]), np.arange(9, dtype=np.uint32)))
    bad_version = bytearray(data)
    bad_version[2] = 2
    with pytest.raises(BitstreamError, match="version 2 is not supported"):
        bitstream.read(bytes(bad_version), tiles_of)
    with pytest.raises(BitstreamError, match="magic"):
        bitstream.read(b"\xff\xd8\xff\xe0" + bytes(data[4:]), tiles_of)
    for pos in (3, 9, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        with pytest.raises(BitstreamError):
            bitstream.read(bytes(flipped), tiles_of)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            bitstream.read(bytes(data[:cut]), tiles_of)
