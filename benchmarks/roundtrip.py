"""Round trip of every ``val`` image with every schedule and stream, through the Python API and the CLI.

    python -m benchmarks.roundtrip [--model DIR] [--limit N] [--folder DIR]

The unit tests run tiny random models; this is the same check with the shipped model on real photos.
A round trip passes when the decoded image has the original's size and the stream's header reads back
the schedule that was asked for. The table gives mean bpp / PSNR per configuration on ``val`` (a
development set: tuning numbers, not the benchmark). The CLI pass compresses the whole folder in one
``hf-run compress`` call and decompresses the results in one ``hf-run decompress`` call."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.kodak import load_images
from hybridflow.models.data import data_root
from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.imageio import read_image
from hybridflow.runtime.masking import SCHEDULES

CONFIGS = [("hybrid", m) for m in (*SCHEDULES, "auto")] + [("vq", "none"), ("continuous", "none")]


def api_pass(codec: Codec, images: list[tuple[str, np.ndarray]]) -> tuple[list[str], str]:
    failures, lines = [], ["| stream | mask | images | bpp | PSNR (dB) | failures |", "|---|---|---|---|---|---|"]
    for stream, mask in CONFIGS:
        bpps, psnrs, bad = [], [], 0
        for name, rgb in images:
            try:
                data = codec.compress(rgb, mask=mask, stream=stream)
                rec = codec.decompress(data)
                info = codec.info(data)
                ok = rec.shape == rgb.shape and info.stream == stream
                ok = ok and (mask == "auto" or stream == "continuous" or set(info.schedules) == {mask})
                if not ok:
                    failures.append(f"{name} {stream}/{mask}: wrong size, stream or schedules")
            except Exception as e:  # a benchmark reports every failure instead of stopping at the first
                ok = False
                failures.append(f"{name} {stream}/{mask}: {type(e).__name__}: {e}")
            if not ok:
                bad += 1
                continue
            bpps.append(8 * len(data) / rgb.shape[0] / rgb.shape[1])
            psnrs.append(metrics.psnr(rgb, rec))
        lines.append(f"| {stream} | {mask} | {len(images)} | {np.mean(bpps):.4f} | {np.mean(psnrs):.2f} | {bad} |")
        print(lines[-1], flush=True)
    return failures, "\n".join(lines)


def cli_pass(folder: Path, model: str | None, images: list[tuple[str, np.ndarray]]) -> list[str]:
    hf_run = [str(Path(sys.executable).parent / "hf-run")]
    model_opt = ["--model", model] if model else []
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        streams, decoded = Path(tmp) / "hfc", Path(tmp) / "png"
        for cmd in ([*hf_run, "compress", str(folder), str(streams), *model_opt],
                    [*hf_run, "decompress", str(streams), str(decoded), *model_opt]):
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                failures.append(f"hf-run {cmd[1]}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
        for name, rgb in images:
            out = decoded / (Path(name).stem + ".png")
            if not out.exists() or read_image(out)[0].shape != rgb.shape:
                failures.append(f"CLI {name}: missing or wrong size")
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--folder", type=Path, default=None, help="default: ../shared/data/val")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    folder = args.folder or data_root() / "val"
    images = load_images(folder, args.limit)
    codec = Codec.load(args.model, provider="cpu")
    t = time.time()
    failures, table = api_pass(codec, images)
    api_s = time.time() - t
    if args.limit is None:
        t = time.time()
        failures += cli_pass(folder, args.model, images)
        cli = f"CLI: {len(images)} images compressed and decompressed in {time.time() - t:.0f} s."
    else:
        cli = "CLI pass skipped (--limit: the CLI takes whole folders)."
    print(f"\n{table}\n\nAPI: {len(images)} images × {len(CONFIGS)} configurations in {api_s:.0f} s. {cli}")
    print(f"Failures: {len(failures)}" + "".join(f"\n- {f}" for f in failures[:20]))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
