"""Scale-out throughput: ``hf-run compress --engine ray`` with 1 worker × 1 thread vs 2 workers × 1 thread.

    python -m benchmarks.scale [--images 40] [--rounds 2] [--model DIR] [--mask auto] [--out benchmarks/out/scale.txt]

Why: issue 19's target is that two workers deliver ≥ 1.7× the images/s of one on a 40-image folder,
with outputs byte-identical to the sequential path. Both runs use the same local Ray (2 CPUs), the
same images (the first N of ``$HF_DATA/val``, copied to a temporary folder that is deleted
afterwards) and fresh output folders. Two figures per run:

- run images/s: images ÷ the whole ``compress_archive`` call, actor start-up and model loading
  included, as a user sees it (on 40 small images the few seconds of start-up weigh a lot);
- busy images/s: images ÷ the busiest worker's summed per-image seconds, i.e. the steady rate an
  archive of millions of images would see, where start-up no longer counts.

An untimed warm-up run first starts Ray Data's own helper processes, so neither configuration pays
for them; then the two configurations alternate for ``--rounds`` rounds and the best round of each
is compared (noise on a shared machine only ever slows a run down). The sequential reference is the
in-process API (what ``hf-run compress`` runs) with one thread. The load average is written next to
the figures: on a loaded 2-core machine the second worker competes with other processes."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from hybridflow.runtime import Codec, scale
from hybridflow.runtime.imageio import READABLE, read_image

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.7


def data_root() -> Path:
    return Path(os.environ.get("HF_DATA", ROOT.parent / "shared" / "data"))


def pick_images(n: int, into: Path) -> list[Path]:
    files = sorted(f for f in (data_root() / "val").iterdir() if f.suffix.lower() in READABLE)[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} images in {data_root() / 'val'}, found {len(files)}")
    into.mkdir(parents=True)
    for f in files:
        shutil.copy(f, into / f.name)
    return sorted(into.iterdir())


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(src: Path, dst: Path, workers: int, model: str | None, mask: str) -> tuple[float, float]:
    """(run images/s, busy images/s) of one ``compress_archive`` call into an empty ``dst``."""
    t0 = time.perf_counter()
    s = scale.compress_archive(str(src), str(dst), mask=mask, model=model, provider="cpu",
                               engine=scale.Engine(workers=workers, threads_per_worker=1))
    wall = time.perf_counter() - t0
    rows = pq.read_table(s.manifest).to_pylist()
    if s.counts != {"ok": len(rows)}:
        raise SystemExit(f"run with {workers} worker(s) did not compress every image: {s.counts}")
    busy: dict[str, float] = {}
    for r in rows:
        busy[r["worker"]] = busy.get(r["worker"], 0.0) + r["seconds"]
    return len(rows) / wall, len(rows) / max(busy.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--mask", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scale.txt")
    args = ap.parse_args()

    import ray

    lines = [f"# benchmarks/scale.py — {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"command: python -m benchmarks.scale --images {args.images} --rounds {args.rounds} "
             f"--mask {args.mask}" + (f" --model {args.model}" if args.model else "")
             + f" (process nice {os.nice(0)})",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ray {ray.__version__}",
             f"load average (1/5/15 min) at start: {loadavg()}"]
    with tempfile.TemporaryDirectory(prefix="hf-scale-") as tmp:
        src = Path(tmp) / "src"
        files = pick_images(args.images, src)
        sizes = {read_image(f)[0].shape[:2] for f in files}
        lines.append(f"images: first {len(files)} of {data_root() / 'val'} ({len(sizes)} distinct sizes, e.g. "
                     f"{'×'.join(map(str, next(iter(sizes))[::-1]))}); mask {args.mask}")
        scale.start_local(num_cpus=2, log_to_driver=False)
        try:
            warm = Path(tmp) / "warm"
            warm.mkdir()
            for f in files[:2]:
                shutil.copy(f, warm / f.name)
            run(warm, Path(tmp) / "warm-out", 2, args.model, args.mask)
            results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            for k in range(args.rounds):
                for workers in (1, 2):
                    out = Path(tmp) / f"out{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    results[workers].append(run(src, out, workers, args.model, args.mask))
                    r = results[workers][-1]
                    lines.append(f"round {k + 1}, {workers} worker(s) × 1 thread: run {r[0]:.3f} images/s, "
                                 f"busy {r[1]:.3f} images/s; load average now {loadavg()}")
        finally:
            ray.shutdown()
        codec = Codec.load(args.model, provider="cpu", threads=1)
        reference = {f.stem: codec.compress(read_image(f)[0], mask=args.mask) for f in files}
        same = all((Path(tmp) / f"out{w}" / (stem + ".hfc")).read_bytes() == data
                   for stem, data in reference.items() for w in (1, 2))
    best = {w: (max(r[0] for r in rs), max(r[1] for r in rs)) for w, rs in results.items()}
    speedup, busy_speedup = best[2][0] / best[1][0], best[2][1] / best[1][1]
    verdict = "met" if speedup >= TARGET else "NOT met"
    lines += [f"best of {args.rounds}: 1 worker {best[1][0]:.3f} / 2 workers {best[2][0]:.3f} run images/s; "
              f"busy {best[1][1]:.3f} / {best[2][1]:.3f}",
              f"speed-up 2 vs 1 worker, whole run: {speedup:.2f}× (target ≥ {TARGET}×: {verdict}); "
              f"busy (start-up excluded): {busy_speedup:.2f}×",
              f"outputs byte-identical to the sequential API (1 thread), both runs: {'yes' if same else 'NO'}",
              f"load average at end: {loadavg()}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
