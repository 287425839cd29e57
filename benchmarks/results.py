"""Regenerate benchmarks/RESULTS.md: every benchmark script in one command.

    python -m benchmarks.results [--model DIR] [--quick]

Four benchmarks run two at a time (``--jobs``), then the speed benchmark alone.
--quick uses 6 Kodak images and skips the large-image runs (for a fast look, not for reporting)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path("benchmarks/out")
# slower or checkpoint-dependent reports, run by their own commands; their saved output is quoted
SEPARATE = [
    ("Stage 2: token prediction with and without guidance", "stage2.txt",
     "python -m benchmarks.stage2 --vq … --cont … --predictor … --ablation … > benchmarks/out/stage2.txt"),
    ("Rate points of the continuous stream (val)", "rates_val/rd_summary.md",
     "python -m benchmarks.rd --folder ../shared/data/val --limit 24 --only hybrid:auto,continuous:none --rates all "
     "--out benchmarks/out/rates_val"),
    ("Complexity-aware masking: does the score pick the right tiles?", "complexity.txt",
     "python -m benchmarks.complexity > benchmarks/out/complexity.txt"),
    ("Round trip of every val image, every schedule (API and CLI)", "roundtrip.txt",
     "python -m benchmarks.roundtrip > benchmarks/out/roundtrip.txt"),
    ("Determinism across execution configurations", "determinism.txt",
     "python -m benchmarks.determinism > benchmarks/out/determinism.txt"),
    ("Fuzzing the container parser and decoder", "fuzz.txt",
     "python -m benchmarks.fuzz > benchmarks/out/fuzz.txt"),
    ("Memory under concurrency: one Codec, simultaneous decompress calls", "concurrency.txt",
     "python -m benchmarks.concurrency > benchmarks/out/concurrency.txt"),
    ("Scale-out on Ray: 1 vs 2 workers (issue 19)", "scale.txt",
     "python -m benchmarks.scale --images 40 --rounds 2 (writes benchmarks/out/scale.txt)"),
]


def quoted(title: str, file: str, command: str) -> str:
    path = OUT / file
    if not path.exists():
        return f"## {title}\n\nNot run yet: `{command}`.\n"
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return f"## {title}\n\n`{command}` (run separately; output of {stamp})\n\n{path.read_text()}\n"


def run(title: str, args: list[str], threads: int | None = None) -> str:
    t = time.time()
    env = dict(os.environ, **({"HF_THREADS": str(threads)} if threads else {}))
    p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)
    body = p.stdout if p.returncode == 0 else f"FAILED ({p.returncode}):\n{p.stderr[-3000:]}"
    print(f"{title}: {time.time() - t:.0f} s", flush=True)
    return f"## {title}\n\n`python -m {' '.join(args)}` ({time.time() - t:.0f} s)\n\n{body}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=2,
                    help="benchmarks run side by side, one ORT thread each (the speed benchmark runs alone after)")
    args = ap.parse_args()
    model = ["--model", args.model] if args.model else []
    limit = ["--limit", "6"] if args.quick else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else "?"
    parallel = [  # the order they are unpacked in below
        ("Stage 1: single-stream codecs on Kodak", ["benchmarks.stage1", *model, *limit]),
        ("Rate–distortion on Kodak", ["benchmarks.rd", *model, *limit, "--out", str(OUT)]),
        ("Runtime: overheads, speed, memory",
         ["benchmarks.runtime_stats", *model, *(["--skip-large"] if args.quick else [])]),
        ("Crops: streams and codecs at matched bpp", ["benchmarks.crops", *model, "--out", str(OUT)]),
    ]
    threads = 1 if args.jobs > 1 else None
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        stage1, rd, runtime, crops = pool.map(lambda job: run(*job, threads), parallel)
    speed = run("Speed: per-stage breakdown, threads, sizes",
                ["benchmarks.speed", *model, *limit, "--out", str(OUT),
                 *(["--sizes", "256,512,1024"] if args.quick else [])])
    side = (f"{args.jobs} benchmarks ran side by side with one onnxruntime thread each, so their seconds are "
            "pessimistic; the speed section ran alone." if args.jobs > 1 else "Benchmarks ran one at a time.")
    sections = [
        "# HybridFlow benchmark results\n",
        f"Generated {datetime.date.today()} at commit {commit} on {cpu} ({platform.system()}), "
        f"onnxruntime CPU provider. Regenerate with `python -m benchmarks.results`. {side}\n",
        "**Kodak is for reporting only.** Every decision (stopping a run, choosing or shipping a model, setting a "
        "rate or a threshold, choosing crops to inspect) is made on `../shared/data/val` or held-back training "
        "crops. Up to session 7 (model s7) several were made on Kodak (models/TRAINING.md: stage-1 rate targets "
        "set from Kodak's bpp, crops compared on kodim04/15/23 to pick a GAN weight); from session 8 on they are "
        "not, and TRAINING.md says which val figures each decision used.\n",
        stage1,
        rd,
        "Plots: `benchmarks/out/rd_psnr.png`, `rd_msssim.png`, `rd_lpips.png` (`rd_sharpness*.png` and all points "
        "in `rd_points.csv` are written too, not kept in git: tree size).\n",
        crops,
        "Figures: `benchmarks/out/crops_streams.jpg`, `benchmarks/out/crops_codecs.jpg`.\n",
        runtime,
        speed,
        *(quoted(*item) for item in SEPARATE),
    ]
    Path("benchmarks/RESULTS.md").write_text("\n".join(sections))
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
