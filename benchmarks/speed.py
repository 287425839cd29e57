"""Where HybridFlow's time goes: per-stage breakdown, threads, ONNX Runtime vs PyTorch, classic codecs, image size.

    python -m benchmarks.speed [--model DIR] [--limit N] [--threads 1,2] [--sizes 256,512,1024,2048,4096]
                               [--out benchmarks/out]

Why: the totals in ``runtime_stats`` say how slow the codec is, not why. To know what to optimise
(a graph, the entropy coder, the integer hyper synthesis, the complexity scoring, or the NumPy glue
around them) each stage is timed inside real ``compress``/``decompress`` calls, by wrapping the
runtime's own methods for the duration of the benchmark; nothing is re-implemented here.

1. Kodak, per stage, for each thread count: seconds per image and megapixels per second. The count
   is onnxruntime's intra-op threads; the matrix products of the integer hyper synthesis run in
   NumPy's BLAS, whose own thread pool it does not set (OPENBLAS_NUM_THREADS does).
2. ONNX Runtime vs PyTorch eager per graph, as measured by ``hf-export`` (manifest ``parity``).
3. AVIF and HEIC encode/decode time at the setting whose bpp is closest to HybridFlow's, per image.
4. Size sweep: encode and decode of an S×S photo-like mosaic, each in a fresh process, so the peak
   RSS of each is its own (see ``peak_rss_mb`` for why not ``ru_maxrss``). Writes ``speed_sweep.png``.

All times are wall-clock on a machine that may be shared: the load average at start is printed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np

from benchmarks.baselines import Baseline, available
from benchmarks.kodak import load_images
from benchmarks.runtime_stats import mosaic, peak_rss_mb
from hybridflow.runtime import Codec
from hybridflow.runtime.complexity import ComplexityModel
from hybridflow.runtime.entropy import Decoder
from hybridflow.runtime.fixedpoint import IntegerHyperSynthesis
from hybridflow.runtime.model import Model

ROOT = Path(__file__).resolve().parents[1]
MASK, STREAM = "auto", "hybrid"
CONTEXT_CODECS = ("AVIF", "HEIC")  # baseline names start with these
OTHER = "other (NumPy/OpenCV glue, container)"

# (owner, method, label): each call is timed under its label. The label is formatted with the
# call's arguments after ``self``, so "graph {0}" becomes "graph vq_encoder" for Model.run.
STAGES: list[tuple[type, str, str]] = [
    (ComplexityModel, "schedule", "complexity scoring"),
    (Model, "run", "graph {0}"),
    (IntegerHyperSynthesis, "__call__", "integer hyper synthesis"),
    (Codec, "entropy_code", "entropy coding (Codec.entropy_code)"),
    (Decoder, "pop_z", "entropy decoding (Decoder.pop_*)"),
    (Decoder, "pop_y", "entropy decoding (Decoder.pop_*)"),
    (Decoder, "pop_indices", "entropy decoding (Decoder.pop_*)"),
]


# ------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line(codec: Codec) -> str:
    import onnxruntime

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    m = codec.model
    return (f"Machine: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), {platform.system()}; "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__} (CPU provider); "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
            f"1-min load average at start {load}. Model {m.name} ({m.manifest['model_id'][:8]}), "
            f"mask {MASK}, stream {STREAM}.")


# --------------------------------------------------------------------------- 1. stage breakdown
class StageClock:
    """Seconds per stage label, filled by wrappers patched over the runtime's methods.

    A stage called from inside another timed stage counts for the outer one only, so the stages
    never add up to more than the total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth = 0

    def timed(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                key = label.format(*args[1:])
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        return wrapper

    def take(self) -> dict[str, float]:
        """The seconds since the last ``take``, and start afresh."""
        out, self.seconds = self.seconds, {}
        return out


@contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    with ExitStack() as stack:
        for owner, method, label in STAGES:
            stack.enter_context(patch.object(owner, method, clock.timed(getattr(owner, method), label)))
        yield


@dataclass
class Direction:
    """Encode or decode of a set of images: summed seconds per stage and in total."""

    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    pixels: int = 0
    images: int = 0

    def add(self, seconds: float, stages: dict[str, float], pixels: int) -> None:
        for k, v in stages.items():
            self.stages[k] = self.stages.get(k, 0.0) + v
        self.total += seconds
        self.pixels += pixels
        self.images += 1

    def per_image(self, seconds: float) -> float:
        return seconds / self.images

    @property
    def other(self) -> float:
        return self.total - sum(self.stages.values())

    @property
    def megapixels_per_s(self) -> float:
        return self.pixels / 1e6 / self.total


@dataclass
class KodakRun:
    threads: int
    encode: Direction = field(default_factory=Direction)
    decode: Direction = field(default_factory=Direction)
    bpp: list[float] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)


def timed_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def kodak_run(model: str | None, threads: int, images: list[tuple[str, np.ndarray]], clock: StageClock) -> KodakRun:
    codec = Codec.load(model, provider="cpu", threads=threads)
    codec.decompress(codec.compress(images[0][1], MASK, STREAM))  # untimed warm-up: opens the sessions
    run = KodakRun(threads)
    for _, rgb in images:
        pixels = rgb.shape[0] * rgb.shape[1]
        clock.take()
        data, seconds = timed_call(codec.compress, rgb, MASK, STREAM)
        run.encode.add(seconds, clock.take(), pixels)
        _, seconds = timed_call(codec.decompress, data)
        run.decode.add(seconds, clock.take(), pixels)
        run.bpp.append(8 * len(data) / pixels)
        run.streams.append(data)
    return run


def stage_table(title: str, runs: list[KodakRun], direction: str) -> str:
    dirs = [getattr(r, direction) for r in runs]
    labels = list(dict.fromkeys(k for d in dirs for k in d.stages))
    head = " | ".join(f"{r.threads} thr s/img | share" for r in runs)
    lines = [f"**{title}**", "", f"| stage | {head} |", "|---|" + "---|---|" * len(runs)]

    def row(label: str, values: list[float]) -> str:
        cells = " | ".join(f"{d.per_image(v):.4f} | {100 * v / d.total:.0f} %" for d, v in zip(dirs, values))
        return f"| {label} | {cells} |"

    for label in labels:
        lines.append(row(label, [d.stages.get(label, 0.0) for d in dirs]))
    lines.append(row(OTHER, [d.other for d in dirs]))
    lines.append(row(f"**total {direction}**", [d.total for d in dirs]))
    lines.append("| megapixels/s | " + " | ".join(f"{d.megapixels_per_s:.3f} | –" for d in dirs) + " |")
    return "\n".join(lines)


def breakdown_section(runs: list[KodakRun]) -> str:
    n = runs[0].encode.images
    same = all(r.streams == runs[0].streams for r in runs[1:])
    lines = [
        f"### Per-stage time on Kodak ({n} images, mean {np.mean(runs[0].bpp):.4f} bpp)",
        "",
        "Each stage is the time inside the named runtime call during real `compress`/`decompress` calls: "
        "`graph X` = `Model.run('X')` (onnxruntime, intra-op threads as in the column; NumPy's BLAS keeps its "
        "own thread pool); complexity scoring = "
        "`ComplexityModel.schedule` (all tiles); integer hyper synthesis = `IntegerHyperSynthesis.__call__` "
        "(the `Model.hyper` call, once per encode and once per decode); entropy coding = `Codec.entropy_code` "
        "(ANS pushes + container write); entropy decoding = `Decoder.pop_z/pop_y/pop_indices` (ANS pops incl. "
        "the scale-table lookup); other = total minus the named stages (header parsing, padding, tiling, "
        "float conversion, window stitching, token assembly). One untimed warm-up image per thread count opens "
        "the sessions first.",
        "",
        stage_table("Encode", runs, "encode"),
        "",
        stage_table("Decode", runs, "decode"),
        "",
        f"Streams byte-identical across thread counts {', '.join(str(r.threads) for r in runs)}: "
        f"{'yes' if same else 'NO'}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- 2. ORT vs PyTorch
def parity_section(manifest: dict[str, Any]) -> str:
    graphs = manifest.get("parity", {}).get("graphs", {})
    timed = {name: g for name, g in graphs.items() if "ort_s" in g and "torch_s" in g}
    lines = ["### ONNX Runtime vs PyTorch eager, per graph (measured by `hf-export`)", ""]
    if not timed:
        return "\n".join(lines + ["The manifest has no parity timings (model exported without parity/timing)."])
    lines += ["Mean of 3 calls after one warm-up, CPU, on the export machine at export time, with the inputs "
              "`hf-export` used for parity: *real* = a batch of real 256² validation tiles (one per image, up to "
              "4) and what the models make of them; *random* = the graph spec's random example batch. "
              "Not re-measured here.", "",
              "| graph | inputs | ORT ms/call | PyTorch ms/call | ORT speed-up |", "|---|---|---|---|---|"]
    for name, g in timed.items():
        inputs = "real" if "real" in g else "random"
        ort_ms, torch_ms = 1e3 * g["ort_s"], 1e3 * g["torch_s"]
        lines.append(f"| {name} | {inputs} | {ort_ms:.2f} | {torch_ms:.2f} | {torch_ms / ort_ms:.2f}× |")
    total_ort = sum(g["ort_s"] for g in timed.values())
    total_torch = sum(g["torch_s"] for g in timed.values())
    lines.append(f"| all graphs, one call each | | {1e3 * total_ort:.2f} | {1e3 * total_torch:.2f} | "
                 f"{total_torch / total_ort:.2f}× |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- 3. classic codecs
@dataclass
class Matched:
    name: str
    settings: list[float] = field(default_factory=list)
    bpp: list[float] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)


def match_bpp(baseline: Baseline, images: list[tuple[str, np.ndarray]], targets: list[float]) -> Matched:
    """Per image, every setting is encoded (and timed); the one nearest the target bpp is kept and decoded."""
    out = Matched(baseline.name)
    for (_, rgb), target in zip(images, targets):
        pixels = rgb.shape[0] * rgb.shape[1]
        tries = [(q, *timed_call(baseline.encode, rgb, q)) for q in baseline.settings]
        q, data, enc_s = min(tries, key=lambda t: abs(8 * len(t[1]) / pixels - target))  # noqa: B023
        _, dec_s = timed_call(baseline.decode, data)
        out.settings.append(q)
        out.bpp.append(8 * len(data) / pixels)
        out.encode_s.append(enc_s)
        out.decode_s.append(dec_s)
    return out


def baseline_section(runs: list[KodakRun], images: list[tuple[str, np.ndarray]]) -> str:
    targets = runs[0].bpp
    lines = ["### For context: AVIF and HEIC at HybridFlow's bpp", "",
             "Per image, the codec setting whose bpp is closest to HybridFlow's on that image (as close as the "
             "settings in `benchmarks/baselines.py` reach; no extrapolation). Libraries' default threading.", "",
             "| codec | settings used | mean bpp | encode s/img | decode s/img |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| HybridFlow ({r.threads} thr) | mask {MASK} | {np.mean(r.bpp):.4f} | "
                     f"{r.encode.per_image(r.encode.total):.3f} | {r.decode.per_image(r.decode.total):.3f} |")
    found = [b for b in available() if b.name.startswith(CONTEXT_CODECS)]
    for b in found:
        m = match_bpp(b, images, targets)
        used = ", ".join(f"{q:g}" for q in sorted(set(m.settings)))
        lines.append(f"| {m.name} | {used} | {np.mean(m.bpp):.4f} | {np.mean(m.encode_s):.3f} | "
                     f"{np.mean(m.decode_s):.3f} |")
    missing = [c for c in CONTEXT_CODECS if not any(b.name.startswith(c) for b in found)]
    if missing:
        lines += ["", f"Not available here: {', '.join(missing)} (install the `bench` extra)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ 4. size sweep
def encode_child(model: str | None, size: int, threads: int, folder: str) -> None:
    """Run in a fresh process: compress an S×S mosaic into ``folder/image.hf``, plus a small warm-up
    stream ``folder/warm.hf`` for the decode process. Prints one JSON line."""
    codec = Codec.load(model, provider="cpu", threads=threads)
    img = mosaic([im for _, im in load_images(limit=6)], size, size)
    warm = codec.compress(img[:256, :256], MASK, STREAM)  # untimed: opens the encode sessions
    data, seconds = timed_call(codec.compress, img, MASK, STREAM)
    Path(folder, "warm.hf").write_bytes(warm)
    Path(folder, "image.hf").write_bytes(data)
    print(json.dumps({"bytes": len(data), "encode_s": seconds, "encode_rss_mb": peak_rss_mb()}))


def decode_child(model: str | None, threads: int, folder: str) -> None:
    """Run in a fresh process: decompress ``folder/image.hf`` after the untimed warm-up stream."""
    codec = Codec.load(model, provider="cpu", threads=threads)
    codec.decompress(Path(folder, "warm.hf").read_bytes())  # opens exactly the decode sessions
    data = Path(folder, "image.hf").read_bytes()
    base = peak_rss_mb()
    _, seconds = timed_call(codec.decompress, data)
    print(json.dumps({"decode_s": seconds, "decode_base_rss_mb": base, "decode_rss_mb": peak_rss_mb()}))


def in_fresh_process(child: Callable[..., None], *args: object) -> dict[str, Any]:
    """``child(*args)`` in a new interpreter; its last line of output is a JSON object."""
    call = f"{child.__name__}(*{args!r})"
    p = subprocess.run([sys.executable, "-c", f"from benchmarks.speed import {child.__name__}; {call}"],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{call} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def sweep(model: str | None, sizes: list[int], threads: int) -> list[dict[str, Any]]:
    model = str(Path(model).resolve()) if model else None
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as folder:
            enc = in_fresh_process(encode_child, model, size, threads, folder)
            dec = in_fresh_process(decode_child, model, threads, folder)
        rows.append({"size": size, "megapixels": size * size / 1e6, **enc, **dec})
        print(f"size {size}: done", file=sys.stderr, flush=True)
    return rows


def sweep_section(rows: list[dict[str, Any]], threads: int) -> str:
    lines = [f"### Image size sweep ({threads} threads, one fresh process per encode and per decode)", "",
             "S×S mosaic of Kodak images (`runtime_stats.mosaic`, cropped below 768×512). Times exclude opening "
             "the sessions (an untimed 256² warm-up runs first); peak RSS (`VmHWM`) includes everything in "
             "that process: interpreter, onnxruntime, sessions, the image. *Decode base* = peak RSS just before "
             "the timed decode.", "",
             "| size | MP | bpp | encode s | decode s | enc µs/px | dec µs/px | peak RSS encode MB | "
             "decode base MB | peak RSS decode MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        px = r["size"] ** 2
        lines.append(f"| {r['size']}² | {r['megapixels']:.2f} | {8 * r['bytes'] / px:.4f} | {r['encode_s']:.2f} | "
                     f"{r['decode_s']:.2f} | {1e6 * r['encode_s'] / px:.2f} | {1e6 * r['decode_s'] / px:.2f} | "
                     f"{r['encode_rss_mb']:.0f} | {r['decode_base_rss_mb']:.0f} | {r['decode_rss_mb']:.0f} |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mp = [r["megapixels"] for r in rows]
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(10, 4))
    t_ax.loglog(mp, [r["encode_s"] for r in rows], "o-", label="encode")
    t_ax.loglog(mp, [r["decode_s"] for r in rows], "s-", label="decode")
    t_ax.set_ylabel("seconds")
    m_ax.semilogx(mp, [r["encode_rss_mb"] for r in rows], "o-", label="encode process")
    m_ax.semilogx(mp, [r["decode_rss_mb"] for r in rows], "s-", label="decode process")
    m_ax.set_ylabel("peak RSS (MB)")
    for ax in (t_ax, m_ax):
        ax.set_xlabel("megapixels")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------ main
def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int_list, default=[1, 2], help="onnxruntime intra-op thread counts")
    ap.add_argument("--sizes", type=int_list, default=[256, 512, 1024, 2048, 4096], help="sweep sizes S (S×S)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_images(limit=args.limit)
    codec = Codec.load(args.model, provider="cpu")
    print(machine_line(codec) + "\n")

    clock = StageClock()
    with instrumented(clock):
        runs = [kodak_run(args.model, t, images, clock) for t in args.threads]
    print(breakdown_section(runs) + "\n")
    print(parity_section(codec.model.manifest) + "\n")
    print(baseline_section(runs, images) + "\n", flush=True)

    if args.sizes:
        threads = max(args.threads)
        rows = sweep(args.model, args.sizes, threads)
        print(sweep_section(rows, threads) + "\n")
        plot = args.out / "speed_sweep.png"
        print(f"Plot: `{plot}`." if plot_sweep(rows, plot) else "matplotlib missing: no plot.")


if __name__ == "__main__":
    main()
