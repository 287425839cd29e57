"""Fuzz the container parser and decoder: every case must decode to an image of its header's size or
raise the codec's own BitstreamError, within 2 s; anything else (another exception, a hang) is a bug.

    python -m benchmarks.fuzz [--cases 50000] [--model DIR] [--seed 0] [--keep-slow DIR]
    python -m benchmarks.fuzz --replay DIR --model DIR     # re-time kept cases (on a quiet machine)
    python -m benchmarks.fuzz --model DIR --tile-cost 1,8,16,24,32,6x6   # decode cost per continuous tile

Two generators, half the cases each:
- *mutate*: bit flips, truncations, insertions, splices of real streams (half re-signed with a valid
  CRC, so the entropy decoder itself is exercised);
- *forge*: structure-aware streams with a valid CRC and arbitrary header fields — stream kind, flags
  incl. reserved bits, rate points (mostly small, sometimes any byte), sizes from 1 px to beyond the
  limits (canonical or not), schedule tables of any length, the right or a wrong model id, and
  payloads that are empty, random, real, cut or extended.
Without --model a tiny random model is exported to a temporary folder (parsing and entropy decoding
do not depend on the weights, and full decodes are cheap); with the shipped model each decode costs
real time, so use a smaller --cases. ``--worst-case`` also times the most expensive valid streams of
≤ 1 KB of each kind (the format's minimum payload per tile caps their tile count). ``--tile-cost``
times the same cheapest continuous streams at the given tile counts (a row of tiles, or RxC), whatever
their size: the measurement FORMAT.md chose the continuous minimum payload from.

A case that raises anything but BitstreamError is printed (hex) and counted as a crash; the run goes on
and exits 1. Time per case is measured as wall and as CPU time; on a loaded machine the wall time says
more about the load than about the decoder, so cases over 2 s of wall time can be kept (--keep-slow) and
re-timed with --replay under /work/tools_local/quiet.sh. --replay takes the model the cases were made
for (a tiny random model is exported afresh with the same weights: ``tiny_components`` is seeded)."""

from __future__ import annotations

import argparse
import collections
import os
import resource
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

from benchmarks.synthetic import photo_like
from hybridflow.runtime import Codec
from hybridflow.runtime.bitstream import FORMAT_VERSION, BitstreamError, _varint, read
from hybridflow.runtime.streams import STREAMS, stream_kind
from hybridflow.runtime.tiling import TILE, TileGrid

SLOW_S = 2.0


def mutate(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    buf = bytearray(data)
    kind = ["flip", "truncate", "insert", "byte", "splice"][rng.integers(5)]
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.integers(0, max(1, len(buf))))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif kind == "byte" and buf:
            buf[pos] = int(rng.integers(256))
        elif kind == "splice":
            buf[pos:] = rng.bytes(int(rng.integers(0, 64)))
    resign = rng.random() < 0.5 and len(buf) > 12
    if resign:
        buf[-4:] = zlib.crc32(bytes(buf[:-4])).to_bytes(4, "little")
    return kind + ("+crc" if resign else ""), bytes(buf)


def _side(rng: np.random.Generator) -> int:
    pick = rng.integers(5)
    if pick == 0:
        return int(rng.integers(1, 600))
    if pick == 1:
        return int(rng.choice([1, 15, 16, 17, 255, 256, 257, 511, 512, 768, 4096, 65535, 65536]))
    if pick == 2:
        return int(rng.integers(1, 1 << 16) + 1)
    if pick == 3:
        return int(rng.integers(1 << 16, 1 << 21))  # beyond the limit
    return 0


def _size_field(rng: np.random.Generator, n: int) -> bytes:
    raw = _varint(n)
    roll = rng.random()
    if roll < 0.05:  # non-canonical: a redundant continuation
        return raw[:-1] + bytes([raw[-1] | 0x80, 0])
    if roll < 0.07:  # truncated varint
        return bytes([raw[0] | 0x80])
    return raw


def forge(rng: np.random.Generator, model_id: bytes, payloads: list[bytes], base_rate: int = 0) -> tuple[str, bytes]:
    """A structure-aware stream with a valid CRC and arbitrary field values (see the module doc)."""
    stream = int(rng.integers(4)) if rng.random() < 0.05 else int(rng.integers(3))
    uniform = rng.random() < 0.7
    flags = stream | (0x4 if uniform else 0) | (int(rng.integers(8)) << 3 if uniform or rng.random() < 0.05 else 0)
    if rng.random() < 0.03:
        flags |= int(rng.integers(1, 4)) << 6
    width, height = _side(rng), _side(rng)
    mid = model_id if rng.random() < 0.9 else rng.bytes(4)
    roll = rng.random()  # the model's base point (most real payloads' point), a small point, or any byte
    rate = base_rate if roll < 0.75 else int(rng.integers(4)) if roll < 0.9 else int(rng.integers(256))
    out = bytearray(b"HF" + bytes([FORMAT_VERSION]) + mid + bytes([flags, rate]))
    out += _size_field(rng, width) + _size_field(rng, height)
    tiles = TileGrid(max(height, 1), max(width, 1)).count
    if not uniform and stream != 2:
        n = -(-3 * tiles // 8) if rng.random() < 0.8 else int(rng.integers(0, 64))
        out += rng.bytes(min(n, 4096))
    name = STREAMS[stream] if stream < 3 else "invalid"
    source = ["empty", "random", "minimum", "real", "real-cut", "real-extended"][rng.integers(6)]
    if source == "random":
        out += rng.bytes(int(rng.integers(1, 2048)))
    elif source == "minimum" and stream < 3:
        floor = stream_kind(STREAMS[stream]).min_payload_per_tile * tiles
        out += rng.bytes(min(floor + int(rng.integers(0, 8)), 1 << 16))
    elif source.startswith("real"):
        real = payloads[int(rng.integers(len(payloads)))]
        if source == "real-cut":
            real = real[: int(rng.integers(0, max(1, len(real))))]
        elif source == "real-extended":
            real += rng.bytes(int(rng.integers(1, 64)))
        out += real
    if rng.random() < 0.95:
        out += zlib.crc32(out).to_bytes(4, "little")
    else:
        out += rng.bytes(4)
    return f"forge {name} {source}", bytes(out)


def seed_streams(codec: Codec, rng: np.random.Generator) -> list[bytes]:
    seeds = []
    for k, (h, w) in enumerate([(64, 64), (200, 300), (300, 520)]):
        img = photo_like(h, w, seed=k)
        top = codec.model.rate_points - 1
        for mask, stream, rate in (("1_4", "hybrid", None), ("auto", "hybrid", None), ("none", "vq", None),
                                   ("1_16", "vq", None), ("none", "continuous", None), ("1_4", "hybrid", 0),
                                   ("none", "continuous", top)):
            seeds.append(codec.compress(img, mask=mask, stream=stream, rate=rate))
    return seeds


def check(codec: Codec, data: bytes) -> str:
    """'decoded' or 'refused (…)'; raises on anything else (the property under test)."""
    try:
        out = codec.decompress(data)
    except BitstreamError as e:
        return f"refused ({type(e).__name__})"
    header = read(data)[0]
    assert out.shape == (header.height, header.width, 3) and out.dtype == np.uint8
    return "decoded"


def cheapest_stream(codec: Codec, stream: str, tiles: int, rows: int = 1) -> bytes:
    """A valid stream of ``rows`` × ``tiles`` tiles whose symbols are about the cheapest there are:
    no VQ index sent (schedule ``all``), every tile's ẑ that of a flat grey tile and every y residual
    0 (the most probable value at the smallest scales). An attacker can write it with the encoder;
    its payload sits at the format's minimum per tile, which is then all that limits the tile count."""
    flat = np.full((TILE, TILE, 3), 128, np.uint8)
    sym = codec.analyse(np.tile(flat, (rows, tiles, 1)), mask="all" if stream_kind(stream).tokens else "none",
                        stream=stream)
    if sym.z_hat is not None:
        one = codec.analyse(flat, mask="none", stream="continuous").z_hat
        sym.z_hat = np.tile(one, (1, rows, tiles))
        sym.y_scale = codec.model.hyper(sym.z_hat)[1]
        sym.y_residual = np.zeros_like(sym.y_residual)
    return codec.entropy_code(sym)


def worst_case(codec: Codec) -> None:
    """Decode time of the most expensive valid streams of ≤ 1 KB: ``cheapest_stream`` with as many
    tiles as still fit in 1 KB. CPU seconds are reported too: on a shared machine they, not the
    wall time, say what the decode costs (on 2 idle cores the wall time is about half the CPU time)."""
    print("worst-case valid streams of ≤ 1 KB (the cheapest symbols, as many tiles as fit in 1 KB):")
    for stream in STREAMS:
        tiles = (1024 - 16) // stream_kind(stream).min_payload_per_tile
        while len(data := cheapest_stream(codec, stream, tiles)) > 1024:
            tiles -= 1
        codec.decompress(data)  # warm-up (opens the sessions)
        t0, c0 = time.perf_counter(), time.process_time()
        codec.decompress(data)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"  {stream:10s} {tiles:3d} tiles, {len(data)} bytes: decoded in {wall:.2f} s ({cpu:.2f} CPU-s)")


def tile_cost(codec: Codec, specs: str) -> None:
    """Decode cost of the cheapest continuous streams of the given tile counts ("8" = a row of 8, "6x6"),
    the better of two decodes after a warm-up; CPU seconds are what the format's minimum is chosen by."""
    codec.decompress(cheapest_stream(codec, "continuous", 2))  # warm-up (opens the sessions)
    print(f"decode cost of the cheapest continuous streams (load average {os.getloadavg()[0]:.1f} before):")
    for spec in specs.split(","):
        rows, cols = (int(v) for v in spec.split("x")) if "x" in spec else (1, int(spec))
        data = cheapest_stream(codec, "continuous", cols, rows)
        runs = []
        for _ in range(2):
            t0, c0 = time.perf_counter(), time.process_time()
            codec.decompress(data)
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        wall, cpu = min(runs)
        n = rows * cols
        print(f"  {rows}x{cols} = {n:3d} tiles, {len(data):5d} bytes: {wall:.2f} s ({cpu:.2f} CPU-s, "
              f"{cpu / n:.3f} CPU-s per tile)", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def replay(codec: Codec, folder: Path) -> None:
    """Re-time kept cases (the slowest first): on a quiet machine this is the figure that counts."""
    times = []
    for path in sorted(folder.glob("*.hfc")):
        data = path.read_bytes()
        t, c = time.perf_counter(), time.process_time()
        outcome = check(codec, data)
        times.append((time.perf_counter() - t, time.process_time() - c, path.name, outcome))
    for wall, cpu, name, outcome in sorted(times, reverse=True):
        print(f"  {name}: {outcome} in {wall:.2f} s ({cpu:.2f} CPU-s)")
    print(f"{len(times)} kept cases re-timed: {sum(w > SLOW_S for w, *_ in times)} over {SLOW_S:.0f} s "
          f"(slowest {max((w for w, *_ in times), default=0):.2f} s); load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=50000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worst-case", action="store_true")
    ap.add_argument("--keep-slow", type=Path, default=None, help="write cases over 2 s of wall time here")
    ap.add_argument("--replay", type=Path, default=None, help="re-time the cases in this folder, then stop")
    ap.add_argument("--tile-cost", default=None, help="time the cheapest continuous streams of these tile counts "
                                                       "(comma-separated, N or RxC), then stop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from hybridflow.export.cli import export_bundle
            from hybridflow.models.bundle import save_bundle, tiny_components

            save_bundle(Path(tmp) / "tiny.pt", tiny_components())
            model = Path(tmp) / "tiny"
            export_bundle(Path(tmp) / "tiny.pt", model, parity=False)
        codec = Codec.load(model, provider="cpu")
        if args.replay:
            print(f"model {codec.model.name} (id {codec.model.model_id.hex()}), cases from {args.replay}")
            replay(codec, args.replay)
            return
        if args.tile_cost:
            print(f"model {codec.model.name} (id {codec.model.model_id.hex()}), stream format {FORMAT_VERSION}")
            tile_cost(codec, args.tile_cost)
            return
        rng = np.random.default_rng(args.seed)
        seeds = seed_streams(codec, rng)
        payloads = [s[read(s)[2] - 4 : -4] for s in seeds]
        label = f"model {codec.model.name} (id {codec.model.model_id.hex()}"
        label += ", tiny random model exported for this run)" if args.model is None else f", {args.model})"
        print(f"{args.cases} cases, seed {args.seed}, {label}, stream format {FORMAT_VERSION}")
        if args.worst_case:
            worst_case(codec)
        outcomes: collections.Counter[str] = collections.Counter()
        slowest, slow, slowest_cpu, slow_cpu, crashes = 0.0, 0, 0.0, 0, 0
        t0 = time.time()
        for i in range(args.cases):
            kind, data = (mutate(rng, seeds[i % len(seeds)]) if i % 2 else
                          forge(rng, codec.model.model_id, payloads, codec.model.base_rate))
            t, c = time.perf_counter(), time.process_time()
            try:
                outcome = check(codec, data)
            except Exception:  # anything but BitstreamError is a bug: show the case, count it, go on
                print(f"case {i} ({kind}) crashed: {data.hex()}\n{traceback.format_exc()}")
                outcome, crashes = "CRASHED", crashes + 1
            dt, dc = time.perf_counter() - t, time.process_time() - c
            slowest, slow = max(slowest, dt), slow + (dt > SLOW_S)
            slowest_cpu, slow_cpu = max(slowest_cpu, dc), slow_cpu + (dc > 2 * SLOW_S)
            outcomes[f"{kind}: {outcome}"] += 1
            if dt > SLOW_S and args.keep_slow:
                args.keep_slow.mkdir(parents=True, exist_ok=True)
                (args.keep_slow / f"case{i:06d}.hfc").write_bytes(data)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        counted = sum(outcomes.values())
        print(f"{counted} cases in {time.time() - t0:.0f} s: {crashes} crashes, {slow} over {SLOW_S:.0f} s of wall "
              f"time (slowest {slowest:.2f} s), {slow_cpu} over {2 * SLOW_S:.0f} CPU-s (the work of {SLOW_S:.0f} s on "
              f"2 cores; slowest {slowest_cpu:.2f} CPU-s), peak RSS {peak:.0f} MB; load average "
              f"{os.getloadavg()[0]:.1f}")
        groups: collections.Counter[str] = collections.Counter()
        for key, n in outcomes.items():  # forged cases grouped by stream kind, mutations by kind
            kind, outcome = key.split(": ")
            groups[" ".join(kind.split(" ")[:2]) + ": " + outcome] += n
        for key, n in sorted(groups.items()):
            print(f"  {key:40s} {n}")
        if crashes:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
