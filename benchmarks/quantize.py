"""What the int8 decoders (``hf-export --quantize int8``, export/quantize.py) buy and cost.

    python -m benchmarks.quantize --model DIR [--ckpt BUNDLE] [--threads 1,2] [--window 20]
                                  [--val N] [--kodak N] [--repeat 5] [--per-graph] [--stream hybrid]
                                  [--out benchmarks/out/quantize.txt]

1. Decoder cost, counted from the ONNX graph: Conv/ConvTranspose/MatMul/Gemm multiply-accumulates per
   output pixel at the runtime's window size (shape inference with the window's dims).
2. Per window (``--window`` tokens a side; default the runtime's window + margins), per thread count:
   fp32 ORT, int8 ORT and PyTorch eager on the same network (from ``--ckpt``), timed in turn
   (interleaved, min and median of ``--repeat``): ms, output MP/s, GFLOP/s and the fraction of this
   CPU's peak. Peak is given two ways: *GEMM* = the best throughput onnxruntime itself reaches on a
   large fp32 MatMul / u8·s8 MatMulInteger here (what a conv could reach at best), and *nominal* =
   cores × clock × FLOP/cycle (AVX-512: 2 FMA pipes × 16 fp32 lanes; VNNI: 4 int8 MACs per fp32
   lane), with the clock as /proc/cpuinfo reports it (boost makes real clocks higher).
3. End to end on Kodak: decode time of the same streams (``auto``) with the fp32 and the int8 model
   (``Model.precision``), 2 threads or the largest of ``--threads``.
4. Quality: PSNR and LPIPS-Alex of fp32 and int8 decodes against the original, on ``--val`` val images
   (the tuning set) and on the decoded Kodak images (reported, never tuned on); ``--per-graph`` adds a
   row per int8 variant alone (every other graph fp32). ``--window 0`` skips 1–2 (quality only).

The machine is shared: the 1-minute load average is printed with every measurement."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hybridflow.export.quantize import node_attr, tensor_shapes, with_shapes
from hybridflow.runtime import Codec
from hybridflow.runtime.metrics import lpips_alex, psnr
from hybridflow.runtime.model import INT8_SUFFIX, Model
from hybridflow.runtime.session import CPU, open_session

GRAPHS = ("pixel_decoder", "pixel_head", "pixel_tail", "vq_decoder")  # pixel_decoder: models before session 17
MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def load_avg() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


# --------------------------------------------------------------------------------- 1. MACs
class ShapeUnknown(ValueError):
    """ONNX shape inference could not size a counted node: its shape depends on an input's values (the
    predictor encodes only the tokens ``visible`` marks), not only on the input shapes."""


def run_macs(path: Path, input_shapes: dict[str, tuple[int, ...]]) -> tuple[int, list[int]]:
    """Multiply-accumulates of one run on inputs of these shapes, counted over Conv, ConvTranspose,
    MatMul and Gemm nodes (what the CPU's FMA units do; norms, activations, resizes are not counted),
    and the shape of the first output."""
    model = with_shapes(onnx.load(path), input_shapes)
    shapes = tensor_shapes(model)
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        x, w, out = (shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]))
        if not x or not w or not out or 0 in out or 0 in x:
            raise ShapeUnknown(f"{path.name}: no shape for {node.name} (shape inference failed)")
        if node.op_type == "Conv":  # every output element: (C_in / groups) × kernel MACs; w = (C_out, C_in/g, k…)
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":  # every input element scatters into (C_out / groups) × kernel
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        else:  # MatMul, Gemm: every output element is a dot product over the shared dimension K
            total += int(np.prod(out)) * (x[-2] if node_attr(node, "transA", 0) else x[-1])
    return total, shapes[model.graph.output[0].name]


def macs(path: Path, side: int, batch: int = 1) -> tuple[int, int]:
    """(multiply-accumulates, output pixels) of one run at ``side``×``side`` tokens."""
    dims = {"batch": batch, "height": side, "width": side}
    shapes = {v.name: tuple(dims.get(d.dim_param, d.dim_value) for d in v.type.tensor_type.shape.dim)
              for v in onnx.load(path).graph.input}
    total, image = run_macs(path, shapes)
    return total, int(np.prod(image[2:])) * batch


# ------------------------------------------------------------------------------ 2. peaks
GEMM_N = 1536


def gemm_runners(threads: int, n: int = GEMM_N) -> dict[str, Callable[[], Any]]:
    """onnxruntime's own large GEMMs here (fp32 MatMul, u8·s8 MatMulInteger, n³ MACs each): timed in
    turn with the decoders, their best rate is the reachable peak under the same load."""
    from onnx import TensorProto, helper

    out = {}
    rng = np.random.default_rng(0)
    for kind, ta, tb, op in (("fp32", TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"),
                             ("int8", TensorProto.UINT8, TensorProto.INT8, "MatMulInteger")):
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "gemm",
                                  [helper.make_tensor_value_info("a", ta, [n, n]),
                                   helper.make_tensor_value_info("b", tb, [n, n])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT if kind == "fp32"
                                                                 else TensorProto.INT32, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        path = Path(f"/tmp/hf-gemm-{kind}-{os.getpid()}.onnx")
        onnx.save(model, path)
        try:
            sess = open_session(path, CPU, threads, int8_kernels=kind == "int8")
        finally:
            path.unlink()
        feed = ({"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)}
                if kind == "fp32" else {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                                        "b": rng.integers(-127, 127, (n, n), dtype=np.int8)})
        out[kind] = (lambda s, f: (lambda: s.run(None, f)))(sess, feed)
    return out


def cpu_clock() -> tuple[float, str]:
    """(GHz, where it came from): ``lscpu``'s maximum clock, else its current one, else BogoMIPS ÷ 2
    (x86 Linux computes BogoMIPS as twice the TSC clock: what a VM without frequency data shows),
    else /proc/cpuinfo's ``cpu MHz``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    for key, scale, how in (("CPU max MHz", 1, "lscpu 'CPU max MHz'"), ("CPU MHz", 1, "lscpu 'CPU MHz'"),
                            ("BogoMIPS", 0.5, "lscpu BogoMIPS ÷ 2 (the TSC clock; lscpu reports no MHz here)")):
        if fields.get(key):
            return float(fields[key]) * scale / 1e3, how
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = next((float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")), 0.0)
    return mhz / 1e3, "/proc/cpuinfo 'cpu MHz'"


def nominal_peak(threads: int) -> dict[str, float | str]:
    """cores × FLOP/cycle × clock: AVX-512 has 2 FMA pipes × 16 fp32 lanes × 2 FLOP = 64 FLOP/cycle per
    core (AVX2: 32); VNNI's u8·s8 dot products do 4 MACs per fp32 lane, so int8 is 4× that."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    fp32 = 64 if "avx512f" in flags else 32 if "fma" in flags else 8  # FLOP/cycle/core
    int8 = fp32 * 4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else fp32 * 2
    ghz, how = cpu_clock()
    return {"fp32": fp32 * threads * ghz, "int8": int8 * threads * ghz, "ghz": ghz, "clock_from": how,
            "fp32_per_cycle": fp32, "int8_per_cycle": int8}


# ----------------------------------------------------------------------------- 3. windows
def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def window_inputs(model: Model, side: int) -> dict[str, dict[str, np.ndarray]]:
    """Real decoder inputs for a ``side``² token window: a Kodak (else val) crop through the model's
    fp32 graphs (export/quantize.decoder_inputs), edge-padded to the window like the runtime's margins."""
    from benchmarks.kodak import load_images
    from hybridflow.export.quantize import decoder_inputs

    tile = model.geometry.tile
    rgb = load_images(limit=1)[0][1]
    tiles = -(-side * model.geometry.token_pixels // tile)
    inputs = decoder_inputs(model, rgb[: tiles * tile, : tiles * tile])
    cells = {"features": int(model.manifest.get("head_cells", 1))}  # the pixel head's cells per token
    out = {k: _window(v, side * cells.get(k, 1)) for k, v in inputs.items()}
    names = {g: [i.name for i in onnx.load(model.directory / model.manifest["graphs"][g]["file"]).graph.input]
             for g in GRAPHS if g in model.manifest["graphs"]}
    return {g: {n: np.ascontiguousarray(out[n]) for n in ns} for g, ns in names.items()}


def _window(v: np.ndarray, n: int) -> np.ndarray:
    """The top-left n×n of ``v``'s last two axes, edge-padded where ``v`` is smaller."""
    if v.shape[-1] >= n and v.shape[-2] >= n:
        return v[..., :n, :n]
    grow = [(0, max(0, n - v.shape[-2])), (0, max(0, n - v.shape[-1]))]
    return np.pad(v[..., :n, :n], [(0, 0)] * (v.ndim - 2) + grow, mode="edge")


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:  # noqa: ANN401
    return lambda: session.run(None, feed)


def torch_runner(ckpt: Path | None, graph: str, threads: int, feed: dict[str, np.ndarray]
                 ) -> Callable[[], Any] | None:
    """The same network in PyTorch eager (fp32, ``threads`` intra-op threads), from the bundle."""
    if ckpt is None or not Path(ckpt).is_file():
        return None
    import torch

    from hybridflow.export.graphs import graph_specs
    from hybridflow.models.bundle import load_bundle

    module = {s.name: s.module for s in graph_specs(load_bundle(ckpt))}[graph].eval()
    args = [torch.from_numpy(v) for v in feed.values()]

    def run() -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return module(*args)

    return run


def window_section(model: Model, ckpt: Path | None, side: int, threads: list[int], repeat: int) -> str:
    inputs = window_inputs(model, side)
    per_px = {g: np.divide(*macs(model.directory / model.manifest["graphs"][g]["file"], side)) for g in inputs}
    lines = [f"MACs per output pixel (Conv/MatMul, from the graph at {side}² tokens): "
             + ", ".join(f"{g} {v:,.0f}" for g, v in per_px.items()) + " (× 2 for FLOPs).", "",
             f"### Per window: {side}×{side} tokens ({side * model.geometry.token_pixels}² output pixels)", "",
             "Runs in turn (one of each, `--repeat` rounds), so all columns of a block see the same load. "
             f"*GEMM peak*: onnxruntime's {GEMM_N}³ fp32 MatMul / u8·s8 MatMulInteger timed in the same rounds. "
             "*Nominal peak*: cores × clock × FLOP/cycle (AVX-512: 2 FMA × 16 lanes; VNNI ×4 for int8), clock "
             "from lscpu (`quantize.cpu_clock`).", "",
             "| graph | threads | variant | min ms | median ms | MP/s | GFLOP/s (GOP/s) | of GEMM peak | "
             "of nominal peak | speed-up vs fp32 ORT | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in threads:
        nominal, gemm = nominal_peak(t), gemm_runners(t)
        for graph, feed in inputs.items():
            path = model.directory / model.manifest["graphs"][graph]["file"]
            mac, pixels = macs(path, side)
            sessions: dict[str, Callable[[], Any]] = {"fp32 ORT": _runner(open_session(path, CPU, t), feed)}
            q = model.manifest["graphs"].get(graph + INT8_SUFFIX)
            if q:
                int8 = open_session(model.directory / q["file"], CPU, t, int8_kernels=True)
                sessions["int8 ORT"] = _runner(int8, feed)
            eager = torch_runner(ckpt, graph, t, feed)
            if eager:
                sessions["PyTorch eager fp32"] = eager
            sessions.update({f"GEMM {k}": v for k, v in gemm.items()})
            for fn in sessions.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {k: [] for k in sessions}
            load = load_avg()
            for _ in range(repeat):
                for k, fn in sessions.items():
                    times[k].append(_timed(fn))
            peak = {kind: 2 * GEMM_N**3 / min(times[f"GEMM {kind}"]) / 1e9 for kind in gemm}
            base = min(times["fp32 ORT"])
            for k, ts in times.items():
                best, kind = min(ts), "int8" if "int8" in k else "fp32"
                if k.startswith("GEMM"):
                    lines.append(f"| (ORT GEMM {GEMM_N}³) | {t} | {kind} | {1e3 * best:.0f} | "
                                 f"{1e3 * np.median(ts):.0f} | – | {peak[kind]:.0f} | 100 % | "
                                 f"{100 * peak[kind] / nominal[kind]:.0f} % | – | {load} |")
                    continue
                rate = 2 * mac / best / 1e9
                lines.append(f"| {graph} | {t} | {k} | {1e3 * best:.0f} | {1e3 * np.median(ts):.0f} | "
                             f"{pixels / best / 1e6:.2f} | {rate:.0f} | {100 * rate / peak[kind]:.0f} % | "
                             f"{100 * rate / nominal[kind]:.0f} % | {base / best:.2f}× | {load} |")
            print(f"window {graph} {t} thr done (load {load_avg()})", flush=True)
    nominal = nominal_peak(1)
    lines += ["", f"Nominal per core: fp32 {nominal['fp32']:.0f} GFLOP/s, int8 {nominal['int8']:.0f} GOP/s at "
              f"{nominal['ghz']:.2f} GHz."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- 4. end to end
def codec(model_dir: Path, precision: str, threads: int, only: str | None = None) -> Codec:
    """``only``: of the model's int8 variants, run only that graph's (the others' entries are dropped
    from this in-memory manifest, so those graphs run fp32)."""
    model = Model.load(model_dir, provider="cpu", threads=threads)
    model.precision = precision
    if only is not None:
        for name in [n for n, g in model.manifest["graphs"].items() if g.get("variant_of") not in (None, only)]:
            del model.manifest["graphs"][name]
    return Codec(model)


def decode_section(model_dir: Path, images: list[tuple[str, np.ndarray]], title: str, threads: int,
                   lpips: Callable[[np.ndarray, np.ndarray], float] | None, timing: bool,
                   per_graph: bool = False, stream: str = "hybrid") -> str:
    """fp32 and int8 decodes of the same streams (mask auto); ``per_graph`` adds one row per int8
    variant with every other graph in fp32: what each variant costs on its own."""
    variants = [g["variant_of"] for g in Model.load(model_dir).manifest["graphs"].values() if "variant_of" in g]
    codecs = {"fp32": codec(model_dir, "fp32", threads)}
    if per_graph:
        codecs.update({f"int8 {g} only": codec(model_dir, "int8", threads, g) for g in variants})
    codecs["int8"] = codec(model_dir, "int8", threads)
    rows: dict[str, dict[str, list[float]]] = {k: {"t": [], "p": [], "l": [], "diff": []} for k in codecs}
    bpp = []
    load_start = load_avg()
    for k, (_, rgb) in enumerate(images):
        data = codecs["fp32"].compress(rgb, stream=stream)
        bpp.append(8 * len(data) / (rgb.shape[0] * rgb.shape[1]))
        ref = None
        for name, c in codecs.items():
            if k == 0:
                c.decompress(data)  # untimed: opens the sessions
            out, t = _timed_result(c.decompress, data)
            ref = out if ref is None else ref
            row = rows[name]
            row["t"].append(t)
            row["p"].append(psnr(rgb, out))
            row["diff"].append(float(np.abs(ref.astype(np.int16) - out).mean()))
            if lpips:
                row["l"].append(lpips(rgb, out))
    m = {name: {k: float(np.mean(v)) if v else float("nan") for k, v in row.items()} for name, row in rows.items()}
    f = m["fp32"]
    lines = [f"### {title}: {len(images)} images, {stream} stream, mask auto, mean {np.mean(bpp):.4f} bpp, "
             f"{threads} threads (load {load_start} at start, {load_avg()} at end)", "",
             "| decoder | PSNR dB | LPIPS-Alex | decode s/img | PSNR cost | LPIPS cost | worst image PSNR cost | "
             "mean abs diff to fp32 |", "|---|---|---|---|---|---|---|---|"]
    for name, v in m.items():
        worst = max(np.subtract(rows["fp32"]["p"], rows[name]["p"]))
        t = f"{v['t']:.3f}" if timing else "–"
        lines.append(f"| {name} | {v['p']:.3f} | {v['l']:.4f} | {t} | {f['p'] - v['p']:+.3f} | "
                     f"{v['l'] - f['l']:+.4f} | {worst:+.3f} | {v['diff']:.2f} |")
    return "\n".join(lines)


def _timed_result(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def val_images(n: int) -> list[tuple[str, np.ndarray]]:
    from hybridflow.models.data import data_root, list_images, read_rgb

    paths = list_images(data_root() / "val")
    return [(p.name, read_rgb(p)) for p in paths[:: max(1, len(paths) // n)][:n]]


def _runtime_window(manifest: dict[str, Any]) -> int:
    """Tokens per side of a full pixel-decoder window as the runtime runs it (window + 2 margins)."""
    from hybridflow.runtime import codec

    if "tail_margin" in manifest:  # the pixel tail's window (the head's are cheaper and wider)
        return codec.TAIL_WINDOW + 2 * int(manifest["tail_margin"])
    window = getattr(codec, "DECODE_WINDOW", 16)
    return window + 2 * int(manifest.get("decoder_margin", codec.DECODE_MARGIN))


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    from benchmarks.kodak import load_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a model exported with --quantize int8")
    ap.add_argument("--ckpt", type=Path, default=Path("models/release/hybridflow.pt"),
                    help="its bundle, for the PyTorch eager column (skipped if missing)")
    ap.add_argument("--threads", type=int_list, default=[1, 2])
    ap.add_argument("--window", type=int, default=None,
                    help="tokens per window side (default: the runtime's window + 2 margins)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--val", type=int, default=12, help="val images for the quality table (0: none)")
    ap.add_argument("--kodak", type=int, default=24, help="Kodak images for the end-to-end table (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--per-graph", action="store_true", help="quality rows for each int8 variant on its own")
    ap.add_argument("--stream", default="hybrid", help="the stream kind the quality tables decode")
    args = ap.parse_args()

    man = Model.load(args.model).manifest
    if not any("variant_of" in g for g in man["graphs"].values()):
        raise SystemExit(f"{args.model} has no int8 graphs: export it with hf-export --quantize int8")
    from benchmarks.speed import cpu_model

    parts = [f"Machine: {cpu_model()}, {os.cpu_count()} cores; model {man.get('name')} ({man['model_id'][:8]}); "
             f"1-min load average at start {load_avg()}.", ""]
    model = Model.load(args.model, provider="cpu")
    model.precision = "fp32"
    side = _runtime_window(man) if args.window is None else args.window
    if side:  # --window 0: quality tables only
        parts.append(window_section(model, args.ckpt, side, args.threads, args.repeat))
        print(parts[-1], flush=True)
    lpips = lpips_alex(say=print) if (args.val or args.kodak) else None
    threads = max(args.threads)
    if args.kodak:
        parts += ["", decode_section(args.model, load_images(limit=args.kodak), "Kodak (end to end)", threads,
                                     lpips, True, args.per_graph, args.stream)]
        print(parts[-1], flush=True)
    if args.val:
        parts += ["", decode_section(args.model, val_images(args.val), "val", threads, lpips, True, args.per_graph,
                                     args.stream)]
        print(parts[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
