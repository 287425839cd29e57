"""Fuzz the container parser and decoder: N mutated streams, each must decode or raise ValueError.

    python -m benchmarks.fuzz [--cases 10000] [--model DIR]

Without --model a tiny random model is exported to a temporary folder (parsing and entropy
decoding do not depend on the weights, and the tiny model makes each full decode cheap). Half the
cases keep the CRC valid after mutating, so the entropy decoder itself is exercised."""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from hybridflow.runtime import Codec


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
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
        rng = np.random.default_rng(args.seed)
        seeds = []
        for k, (h, w) in enumerate([(64, 64), (200, 300), (300, 520)]):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for mask, stream in (("1_4", "hybrid"), ("auto", "hybrid"), ("none", "vq"), ("none", "continuous")):
                seeds.append(codec.compress(np.roll(img, k, 0), mask=mask, stream=stream))
        outcomes: collections.Counter[str] = collections.Counter()
        t0 = time.time()
        for i in range(args.cases):
            kind, data = mutate(rng, seeds[i % len(seeds)])
            try:
                out = codec.decompress(data)
                assert out.dtype == np.uint8 and out.ndim == 3
                outcomes[f"{kind}: decoded"] += 1
            except ValueError as e:
                outcomes[f"{kind}: refused ({type(e).__name__})"] += 1
            # anything else propagates: a crash is a bug
        print(f"{args.cases} cases in {time.time() - t0:.0f} s, no crash")
        for key, n in sorted(outcomes.items()):
            print(f"  {key:40s} {n}")


if __name__ == "__main__":
    main()
