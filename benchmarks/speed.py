"""Where HybridFlow's time goes: per-stage breakdown, threads, decoder FLOPs and the CPU's peak,
ONNX Runtime vs PyTorch eager, classic codecs, image size.

    python -m benchmarks.speed [--model DIR] [--limit N] [--threads 1,2] [--parts kodak,eager,sweep,large]
                               [--release runs/release] [--sizes 256,512,1024,2048,4096] [--large 8000x6000]
                               [--stream hybrid:auto] [--no-context] [--out benchmarks/out]

Why: the totals in ``runtime_stats`` say how slow the codec is, not why. To know what to optimise
(a graph, the entropy coder, the integer hyper synthesis, the complexity scoring, or the NumPy glue
around them) each stage is timed inside real ``compress``/``decompress`` calls, by wrapping the
runtime's own methods for the duration of the benchmark; nothing is re-implemented here.

Parts (``--parts``; each fits one quiet-machine command, see benchmarks/RESULTS.md):

- ``kodak``: Kodak, per stage, for each thread count: seconds per image and megapixels per second.
  The count is onnxruntime's intra-op threads; the matrix products of the integer hyper synthesis run
  in NumPy's BLAS, whose own thread pool it does not set (OPENBLAS_NUM_THREADS does). Then the
  decoder's cost: multiply-accumulates counted from the ONNX graphs at the shapes each decode really
  ran (``quantize.run_macs``), the rate reached and its fraction of this CPU's nominal peak
  (``quantize.nominal_peak``). Then AVIF and HEIC, in the same run, at the setting whose bpp is
  closest to HybridFlow's, per image.
- ``eager``: the same ``Codec`` procedure with every graph run by PyTorch eager (fp32; ``TorchModel``
  of export/parity.py) from the stage checkpoints ``hf-train unbundle`` writes (``--release``), on the
  same streams: decode and encode time per graph and in total, runtime ÷ eager.
- ``sweep``: encode and decode of an S×S photo-like mosaic, each in a fresh process, so the peak
  RSS of each is its own (see ``peak_rss_mb`` for why not ``ru_maxrss``). Writes ``speed_sweep.png``.
- ``large``: one W×H mosaic (``--large``) encoded and decoded in fresh processes
  (``runtime_stats.large``): wall time and peak RSS.

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
from collections import Counter
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
from benchmarks.quantize import ShapeUnknown, nominal_peak, run_macs
from benchmarks.runtime_stats import mosaic, peak_rss_mb
from hybridflow.runtime import Codec
from hybridflow.runtime.complexity import ComplexityModel
from hybridflow.runtime.entropy import Decoder
from hybridflow.runtime.fixedpoint import IntegerContext, IntegerHyperSynthesis
from hybridflow.runtime.masking import CHOICES
from hybridflow.runtime.metrics import psnr
from hybridflow.runtime.model import INT8_SUFFIX, Model
from hybridflow.runtime.session import usable_cpus
from hybridflow.runtime.streams import STREAMS
from hybridflow.runtime.tiling import TILE

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
    (IntegerContext, "__call__", "integer channel context"),
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

    usable = usable_cpus()
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


Shapes = tuple[tuple[str, tuple[int, ...]], ...]


class GraphCalls:
    """Every ``Model.run`` call's graph and input shapes since the last ``take``: what the FLOP count
    of a decode is computed from (the shapes a decode really ran, windows and margins included)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, Shapes]] = Counter()

    def logged(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(model: Model, graph: str, **inputs: np.ndarray) -> Any:
            self.calls[(graph, tuple((k, v.shape) for k, v in inputs.items()))] += 1
            return fn(model, graph, **inputs)

        return wrapper

    def take(self) -> Counter[tuple[str, Shapes]]:
        out, self.calls = self.calls, Counter()
        return out


@contextmanager
def instrumented(clock: StageClock, calls: GraphCalls | None = None,
                 extra: list[tuple[type, str, str]] | None = None) -> Iterator[None]:
    with ExitStack() as stack:
        if calls is not None:
            stack.enter_context(patch.object(Model, "run", calls.logged(Model.run)))
        for owner, method, label in STAGES + (extra or []):
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
    decode_calls: Counter[tuple[str, Shapes]] = field(default_factory=Counter)  # over all images
    precision: dict[str, str] = field(default_factory=dict)  # graph → the variant that ran


def timed_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def precision_of(model: Model, graph: str) -> str:
    """Which variant of ``graph`` a CPU session of ``model`` runs (model.Model._variant's rule)."""
    entry = model.manifest["graphs"].get(graph + INT8_SUFFIX)
    return "int8" if entry and entry.get("variant_of") == graph and model.precision != "fp32" else "fp32"


def kodak_run(model: str | None, threads: int, images: list[tuple[str, np.ndarray]], clock: StageClock,
              calls: GraphCalls) -> KodakRun:
    codec = Codec.load(model, provider="cpu", threads=threads)
    codec.decompress(codec.compress(images[0][1], MASK, STREAM))  # untimed warm-up: opens the sessions
    run = KodakRun(threads, precision={g: precision_of(codec.model, g) for g in codec.model.manifest["graphs"]})
    for _, rgb in images:
        pixels = rgb.shape[0] * rgb.shape[1]
        clock.take()
        data, seconds = timed_call(codec.compress, rgb, MASK, STREAM)
        run.encode.add(seconds, clock.take(), pixels)
        calls.take()
        _, seconds = timed_call(codec.decompress, data)
        run.decode.add(seconds, clock.take(), pixels)
        run.decode_calls.update(calls.take())
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
        "(the `Model.hyper` call, once per encode and once per decode); integer channel context = "
        "`IntegerContext.__call__` (once per slice after the first, models with a context); entropy coding = "
        "`Codec.entropy_code` (ANS pushes + container write); entropy decoding = "
        "`Decoder.pop_z/pop_y/pop_indices` (ANS pops incl. the scale-table lookup); other = total minus the "
        "named stages (header parsing, padding, tiling, "
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


# ------------------------------------------------------------------- 2. decoder FLOPs and peak
def cost_section(model_dir: Path, runs: list[KodakRun]) -> str:
    """Per decode graph: multiply-accumulates per image pixel (counted from the ONNX graph at the shapes
    the decodes ran), the rate each thread count reached inside ``Model.run`` and its share of the
    nominal peak of as many cores (int8 peak for graphs that ran their int8 variant)."""
    graphs = json.loads((model_dir / "manifest.json").read_text())["graphs"]
    per_call: dict[tuple[str, Shapes], int] = {}
    macs: Counter[str] = Counter()
    uncounted: dict[str, str] = {}  # graph → why: shapes that depend on the stream, not only on the input sizes
    for key, n in runs[0].decode_calls.items():
        graph, shapes = key
        if graph in uncounted:
            continue
        if key not in per_call:
            try:
                per_call[key] = run_macs(model_dir / graphs[graph]["file"], dict(shapes))[0]
            except ShapeUnknown as e:
                uncounted[graph] = str(e)
                macs.pop(graph, None)
                continue
        macs[graph] += n * per_call[key]
    pixels = runs[0].decode.pixels
    peak1 = nominal_peak(1)
    lines = ["### Decoder FLOPs per pixel and the fraction of this CPU's peak", "",
             f"Multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm nodes (the FMA work; norms, "
             f"activations, resizes and (de)quantisation are not counted), from the ONNX graphs at the input shapes "
             f"the {runs[0].decode.images} Kodak decodes above really ran (`quantize.run_macs`), per pixel of the "
             f"decoded image; FLOP = 2 × MAC. Rate = FLOPs ÷ the seconds inside `Model.run` for that graph. "
             f"*Nominal peak* = threads × {peak1['fp32_per_cycle']} FLOP/cycle (AVX-512: 2 FMA pipes × 16 fp32 "
             f"lanes × 2) × {peak1['ghz']:.3f} GHz ({peak1['clock_from']}) = {peak1['fp32']:.0f} GFLOP/s per core "
             f"fp32; int8 graphs against {peak1['int8_per_cycle']} op/cycle (AVX-512 VNNI: 4 u8·s8 MACs per fp32 "
             f"lane) = {peak1['int8']:.0f} GOP/s per core. Boost clocks may be higher than this nominal clock.", "",
             "| graph | precision | MAC/pixel | GFLOP/image | " + " | ".join(
                 f"{r.threads} thr GFLOP/s | {r.threads} thr of peak" for r in runs) + " |",
             "|---|---|---|---|" + "---|---|" * len(runs)]
    total = sum(macs.values())
    for graph, m in sorted(macs.items(), key=lambda kv: -kv[1]):
        kind = runs[0].precision.get(graph, "fp32")
        cells = []
        for r in runs:
            seconds = r.decode.stages.get(f"graph {graph}", 0.0)
            rate = 2 * m / seconds / 1e9 if seconds else float("nan")
            cells.append(f"{rate:.1f} | {100 * rate / nominal_peak(r.threads)[kind]:.1f} %")
        lines.append(f"| {graph} | {kind} | {m / pixels:,.0f} | {2 * m / runs[0].decode.images / 1e9:.1f} | "
                     + " | ".join(cells) + " |")
    cells = []
    for r in runs:
        rate = 2 * total / r.decode.total / 1e9
        peak = nominal_peak(r.threads)
        cells.append(f"{rate:.1f} | {100 * rate / peak['fp32']:.1f} % fp32, {100 * rate / peak['int8']:.1f} % int8")
    lines.append(f"| **whole decode** (wall time) | mixed | {total / pixels:,.0f} | "
                 f"{2 * total / runs[0].decode.images / 1e9:.1f} | " + " | ".join(cells) + " |")
    if uncounted:
        lines += ["", "Not counted (their work depends on the stream, not only on the input shapes, so the rows "
                  "above and the whole-decode row leave them out; their time is in the per-stage table): "
                  + "; ".join(f"{g} ({why})" for g, why in sorted(uncounted.items())) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- 3. ORT vs PyTorch
def eager_codec(release: Path, model_dir: Path) -> Codec:
    """The runtime's ``Codec`` procedure with every graph run by PyTorch eager (fp32), built from the
    stage checkpoints ``hf-train unbundle`` writes: the networks the ONNX graphs were exported from."""
    from hybridflow.export.graphs import graph_specs
    from hybridflow.export.parity import TorchModel
    from hybridflow.models import checkpoint
    from hybridflow.models.bundle import Components
    from hybridflow.models.fusion import Fusion, FusionConfig
    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec
    from hybridflow.models.train.release import load_correction
    from hybridflow.models.transformer import MaskedTokenPredictor, TransformerConfig
    from hybridflow.models.vq import VQAutoencoder, VQConfig

    missing = [f for f in ("vq.pt", "cont.pt", "predictor.pt", "correction.pt") if not (release / f).is_file()]
    if missing:
        raise SystemExit(f"{release}: {', '.join(missing)} missing; write them with "
                         f"`hf-train unbundle {model_dir} --out {release}`")
    vq = checkpoint.load_model(release / "vq.pt", VQAutoencoder, VQConfig)
    cont = checkpoint.load_model(release / "cont.pt", ContinuousCodec, ContConfig)
    predictor = checkpoint.load_model(release / "predictor.pt", MaskedTokenPredictor, TransformerConfig)
    # as `hf-train bundle` makes a release: expected codes if the correction was trained on them; the fusion
    # is a part of its own (absent before session 10)
    correction, soft = load_correction(release / "correction.pt", vq, cont)
    fused = release / "fusion.pt"
    fusion = checkpoint.load_model(fused, Fusion, FusionConfig) if fused.is_file() else None
    parts = Components(vq, cont, predictor, correction, None, None, "eager", False,  # type: ignore[arg-type]
                       fusion=fusion, soft_codes=soft).eval()
    return Codec(TorchModel.from_specs(model_dir, graph_specs(parts)))


@dataclass
class EagerRun:
    threads: int
    runtime: KodakRun
    eager: KodakRun
    psnr_vs_runtime: list[float] = field(default_factory=list)


def eager_run(model_dir: Path, release: Path, threads: int, images: list[tuple[str, np.ndarray]],
              clock: StageClock) -> EagerRun:
    """Runtime, then eager, on the same images (blocks rather than interleaved calls: neither
    library's idle worker threads then spin against the other's)."""
    import torch

    torch.set_num_threads(threads)
    runtime, eager = Codec.load(model_dir, provider="cpu", threads=threads), eager_codec(release, model_dir)
    out = EagerRun(threads, KodakRun(threads), KodakRun(threads))
    decoded: list[np.ndarray] = []
    for codec, run in ((runtime, out.runtime), (eager, out.eager)):
        codec.decompress(codec.compress(images[0][1], MASK, STREAM))  # untimed warm-up
        for k, (_, rgb) in enumerate(images):
            pixels = rgb.shape[0] * rgb.shape[1]
            clock.take()
            data, seconds = timed_call(codec.compress, rgb, MASK, STREAM)
            run.encode.add(seconds, clock.take(), pixels)
            stream = out.runtime.streams[k] if run is out.eager else data  # the eager decoder gets the same bytes
            rec, seconds = timed_call(codec.decompress, stream)
            run.decode.add(seconds, clock.take(), pixels)
            run.streams.append(data)
            if run is out.eager:
                out.psnr_vs_runtime.append(psnr(decoded[k], rec))
            else:
                decoded.append(rec)
    return out


def eager_section(runs: list[EagerRun], release: Path) -> str:
    n = runs[0].runtime.decode.images
    same = sum(a == b for a, b in zip(runs[0].runtime.streams, runs[0].eager.streams))
    lines = ["### ONNX Runtime vs PyTorch eager on the same graphs", "",
             f"{n} Kodak images; *runtime* = the shipped runtime as it runs (onnxruntime CPU, int8 pixel decoder); "
             f"*eager* = the same `Codec` procedure with each graph's PyTorch module (fp32, `torch.set_num_threads` "
             f"= the thread count) built from `{release}` (written by `hf-train unbundle runtime/assets/default "
             f"--out {release}`), decoding the runtime's bytes. One untimed warm-up image each; the integer hyper "
             f"synthesis and entropy coding are the same NumPy code in both. Eager decodes vs runtime decodes: "
             f"{np.mean(runs[0].psnr_vs_runtime):.1f} dB PSNR (same networks; int8 vs fp32 pixel decoder); "
             f"encoders' streams byte-identical for {same}/{n} images.", "",
             "| stage | " + " | ".join(f"{r.threads} thr runtime s/img | eager s/img | runtime speed-up"
                                      for r in runs) + " |", "|---|" + "---|---|---|" * len(runs)]
    for direction in ("decode", "encode"):
        stages = [k for r in runs for k in getattr(r.eager, direction).stages]
        labels = list(dict.fromkeys(k for k in stages if k.startswith("graph")))
        for label in [*labels, f"**total {direction}**"]:
            cells = []
            for r in runs:
                a, b = getattr(r.runtime, direction), getattr(r.eager, direction)
                ta = a.total if label.startswith("**") else a.stages.get(label, 0.0)
                tb = b.total if label.startswith("**") else b.stages.get(label, 0.0)
                cells.append(f"{a.per_image(ta):.4f} | {b.per_image(tb):.4f} | {tb / ta if ta else float('nan'):.2f}×")
            lines.append(f"| {direction}: {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- 4. classic codecs
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


# ------------------------------------------------------------------------------ 5. size sweep
def encode_child(model: str | None, size: int, threads: int, folder: str) -> None:
    """Run in a fresh process: compress an S×S mosaic into ``folder/image.hf``, plus a small warm-up
    stream ``folder/warm.hf`` for the decode process. Prints one JSON line."""
    codec = Codec.load(model, provider="cpu", threads=threads)
    img = mosaic([im for _, im in load_images(limit=6)], size, size)
    warm = codec.compress(img[:TILE, :TILE], MASK, STREAM)  # untimed: opens the encode sessions
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


PARTS = ("kodak", "eager", "sweep", "large")


def main() -> None:
    global MASK, STREAM  # the stream every timed call of this process makes (--stream)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int_list, default=[1, 2], help="onnxruntime intra-op thread counts")
    ap.add_argument("--parts", default="kodak,eager,sweep", help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--release", type=Path, default=Path("runs/release"),
                    help="stage checkpoints for the eager part (hf-train unbundle MODEL --out DIR)")
    ap.add_argument("--sizes", type=int_list, default=[256, 512, 1024, 2048, 4096], help="sweep sizes S (S×S)")
    ap.add_argument("--large", default="8000x6000", help="WxH of the large part")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--no-context", action="store_true", help="kodak part without AVIF/HEIC (a shorter quiet slot)")
    ap.add_argument("--stream", default=f"{STREAM}:{MASK}",
                    help="STREAM:MASK the kodak and eager parts time, e.g. vq:none for the VQ-only decoder")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if args.stream != f"{STREAM}:{MASK}":
        if {"sweep", "large"} & set(parts):
            ap.error("--stream applies to the kodak and eager parts only (sweep and large use fresh processes)")
        STREAM, _, MASK = args.stream.partition(":")
        if STREAM not in STREAMS or MASK not in CHOICES:
            ap.error(f"--stream {args.stream}: choose STREAM:MASK from {', '.join(STREAMS)} and {', '.join(CHOICES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_images(limit=args.limit)
    codec = Codec.load(args.model, provider="cpu")
    model_dir = codec.model.directory
    print(f"`python -m benchmarks.speed {' '.join(sys.argv[1:])}`\n")
    print(machine_line(codec) + "\n", flush=True)

    if "kodak" in parts:
        clock, calls = StageClock(), GraphCalls()
        with instrumented(clock, calls):
            runs = [kodak_run(args.model, t, images, clock, calls) for t in args.threads]
        print(breakdown_section(runs) + "\n")
        print(cost_section(model_dir, runs) + "\n")
        if not args.no_context:
            print(baseline_section(runs, images) + "\n", flush=True)

    if "eager" in parts:
        from hybridflow.export.parity import TorchModel

        clock = StageClock()
        with instrumented(clock, extra=[(TorchModel, "run", "graph {0}")]):
            eager = [eager_run(model_dir, args.release, t, images, clock) for t in args.threads]
        print(eager_section(eager, args.release) + "\n", flush=True)

    if "sweep" in parts and args.sizes:
        threads = max(args.threads)
        rows = sweep(args.model, args.sizes, threads)
        print(sweep_section(rows, threads) + "\n")
        plot = args.out / "speed_sweep.png"
        print(f"Plot: `{plot}`." if plot_sweep(rows, plot) else "matplotlib missing: no plot.")

    if "large" in parts:
        from benchmarks.runtime_stats import large

        w, h = (int(v) for v in args.large.split("x"))
        r = large(args.model, h, w)
        print(f"### {w}×{h} mosaic, fresh processes, onnxruntime's default threads ({os.cpu_count()} here)\n\n"
              f"encode {r['encode_s']:.1f} s (peak RSS {r['peak_rss_encode_mb']:.0f} MB), {r['bytes']} bytes "
              f"({r['bpp']:.4f} bpp); decode {r['decode_s']:.1f} s = {w * h / 1e6 / r['decode_s']:.3f} MP/s, "
              f"peak RSS {r['peak_rss_decode_mb']:.0f} MB (VmHWM of the decoding process, image included).\n")


if __name__ == "__main__":
    main()
