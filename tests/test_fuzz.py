"""Bounded fuzzing of the container parser and decoder: every mutated stream either decodes to an
image of the header's size or raises a ValueError subclass with a message — never anything else.
(benchmarks/fuzz.py runs the same property for ≥ 10,000 cases.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridflow.runtime import Codec


@pytest.fixture(scope="module")
def stream(codec: Codec) -> bytes:
    img = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    return codec.compress(img, mask="1_4")


def check(codec: Codec, data: bytes) -> None:
    try:
        out = codec.decompress(data)
    except ValueError as e:
        assert str(e)
        return
    assert out.ndim == 3 and out.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_streams(codec: Codec, stream: bytes, data: st.DataObject) -> None:
    buf = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif buf:
            buf[pos] = data.draw(st.integers(0, 255))
    check(codec, bytes(buf))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_random_bytes(codec: Codec, blob: bytes) -> None:
    check(codec, blob)


def test_every_truncation_is_refused(codec: Codec, stream: bytes) -> None:
    for cut in range(len(stream)):
        with pytest.raises(ValueError):
            codec.decompress(stream[:cut])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutations_behind_a_valid_checksum(codec: Codec, stream: bytes, data: st.DataObject) -> None:
    """Corruption the CRC cannot see (re-signed after mutating): the decoder itself must cope."""
    import zlib

    body = bytearray(stream[:-4])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(8, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del body[data.draw(st.integers(8, len(body))):]
    check(codec, bytes(body) + zlib.crc32(body).to_bytes(4, "little"))
