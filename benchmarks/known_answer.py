"""The known-answer vector of the shipped model: a committed stream of a few hundred bytes, the hash
of its decode, the decoded image and the bytes its re-encode must give (tests/test_known_answer.py).

    python -m benchmarks.known_answer            # check the committed vector against this runtime
    python -m benchmarks.known_answer --write    # regenerate it (after re-exporting runtime/assets/default
                                                 # or changing the format on purpose), then commit the folder

The image is generated (benchmarks/synthetic.py), never a data-set image."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import cv2
import numpy as np

from benchmarks.synthetic import photo_like
from hybridflow.runtime import Codec
from hybridflow.runtime.bitstream import FORMAT_VERSION

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "known_answer"
MASK = "1_4"
REGENERATE = "python -m benchmarks.known_answer --write"


def sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_decoded() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(FOLDER / "decoded.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def write(codec: Codec) -> dict:
    stream = codec.compress(photo_like(96, 128, seed=7), mask=MASK)
    decoded = codec.decompress(stream)
    FOLDER.mkdir(parents=True, exist_ok=True)
    (FOLDER / "stream.hfc").write_bytes(stream)
    cv2.imwrite(str(FOLDER / "decoded.png"), cv2.cvtColor(decoded, cv2.COLOR_RGB2BGR))
    expected = {"model": codec.model.name, "model_id": codec.model.manifest["model_id"],
                "format_version": FORMAT_VERSION, "mask": MASK, "stream_bytes": len(stream),
                "decode_sha256": sha256(decoded), "reencode_hex": codec.compress(read_decoded(), mask=MASK).hex(),
                # the same re-encode at every rate point (the gains' code path; equal to the above at the base)
                "rate_points": codec.model.rate_points, "base_rate": codec.model.base_rate,
                "reencode_hex_per_rate": [codec.compress(read_decoded(), mask=MASK, rate=k).hex()
                                          for k in range(codec.model.rate_points)],
                "recorded_on": cpu()}
    (FOLDER / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate the committed vector")
    args = ap.parse_args()
    codec = Codec.load()
    if args.write:
        e = write(codec)
        print(f"wrote {FOLDER}: {e['stream_bytes']} B stream for {e['model']} ({e['model_id'][:8]}), "
              f"decode {e['decode_sha256'][:12]}")
        return
    expected = json.loads((FOLDER / "expected.json").read_text())
    out = codec.decompress((FOLDER / "stream.hfc").read_bytes())
    same = sha256(out) == expected["decode_sha256"]
    reencode = codec.compress(read_decoded(), mask=MASK).hex() == expected["reencode_hex"]
    reencode &= [codec.compress(read_decoded(), mask=MASK, rate=k).hex() for k in range(codec.model.rate_points)] \
        == expected["reencode_hex_per_rate"]
    print(f"model {codec.model.name} ({codec.model.model_id.hex()}); vector for {expected['model_id'][:8]}: "
          f"decode hash {'matches' if same else 'differs'}, re-encode {'matches' if reencode else 'differs'}")


if __name__ == "__main__":
    main()
