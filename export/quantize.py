"""int8 variants of the decode-side graphs: static QDQ quantisation, calibrated on training crops.

What: for each graph in ``QUANTISABLE`` that the model has, ``add_int8`` writes ``<graph>_int8.onnx``
next to the fp32 graph and lists it in the manifest as ``graphs["<graph>_int8"]`` (with
``variant_of``), so the model id covers its bytes. The runtime runs the variant in place of the fp32
graph on the CPU provider (``runtime/model.py``; ``HF_PRECISION=fp32`` turns it off).

How: onnxruntime's ``quantize_static`` with ``QuantFormat.QDQ``, per-channel int8 weights and uint8
activations (the u8·s8 kernels that use avx512_vnni), MinMax ranges from a fixed set of training
crops. The calibration inputs are what each graph really sees at decode: each crop goes through the
model's own fp32 graphs as the codec does (vq_encoder → indices → the manifest's code vectors, every index
sent; cont_analysis → hyper_analysis →
rounded ẑ → integer hyper synthesis → rounded ŷ at the base rate point → cont_synthesis → guidance;
for the fusion, the two pictures it merges, each rounded to 8 bits as the runtime hands them over:
pixel_tail(pixel_head(codes, guidance)) and cont_reconstruct(guidance)). Those pictures come from the fp32
graphs even where the runtime would run an int8 variant: fp32 results agree across CPUs to float
noise, which the snapped ranges absorb (below), int8 kernels' roundings need not. The graphs keep
dynamic spatial dims, so calibration does not depend on the runtime's window size.

Reproducibility: the ranges are measured in float by onnxruntime, whose last bits depend on the CPU.
Every range is snapped outward to ``RANGE_BITS`` significant bits before the scales are computed
(``snap``), so a re-export on another machine writes the same bytes unless a range lies within float
noise of a grid point. Crops and their order are fixed (sorted file names, centred crops).

What is never quantised: the encoder side and everything that feeds entropy parameters (vq_encoder,
cont_analysis, hyper_analysis, the integer hyper synthesis): streams stay bit-exact across CPUs and
precisions. The quantised graphs only change decoded pixels, by the amount recorded in the manifest's
``parity.int8`` (``quality``)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..runtime import slices
from ..runtime.rates import BASE
from ..runtime.tiling import TILE

# Measured in benchmarks/RESULTS.md, "int8 for the small decoder graphs": not vq_decoder since s11 (the
# VQ-only stream is the niche configuration, and the tracked tree, ≤ 32 MiB, had no room for its variant
# next to cont_reconstruct's). The fusion since session 16: with onnxruntime 1.31 and non-spinning sessions
# its int8 variant (half-resolution body only, ``full_resolution_convs``) is ≈ 20 % faster than fp32 for a
# largest pixel difference of 1 (session 10, all convolutions quantised, measured no gain)
# The predictor since session 17: dynamic int8 over its linear layers (export/int8_weights.py), not static QDQ.
# The pixel decoder since session 17 as its two graphs, pixel_head and pixel_tail (models/correction.py).
QUANTISABLE = ("pixel_head", "pixel_tail", "cont_reconstruct", "fusion", "predictor")
# Decode-side graphs this module knows how to feed (``decoder_inputs``); QUANTISABLE is what an export
# quantises by default. cont_reconstruct only where it draws full-resolution pixels (a learned up-sampling,
# manifest ``reconstruct_pixels`` = 1): older models' is a small low-res graph, not worth a variant.
FEEDABLE = ("pixel_decoder", "pixel_head", "pixel_tail", "vq_decoder", "cont_reconstruct", "fusion", "predictor")
PREDICTOR_CHECK_MASK = "1_4"  # the schedule at which the predictor's int8 variant is checked
NEVER = ("vq_encoder", "cont_analysis", "hyper_analysis")  # the entropy path stays bit-exact
SUFFIX = "_int8"
RANGE_BITS = 4  # significant bits of each snapped calibration range (≤ 6 % wider than measured)
CALIBRATION_IMAGES = 24
CALIBRATION_SIDE = 512  # at most 2×2 tiles per crop: the centred whole-tile area of each image
QUALITY_IMAGES = 6
MAX_PSNR_LOSS = 0.05  # dB; a variant that costs more on the quality crops is not kept
# Only convolutions (measured on the s7 pixel decoder, 6 val crops, see benchmarks/quantize.py): quantising
# the SiLU/residual Mul/Sigmoid/Add too cost 0.10–0.13 dB and was slower (more Q/DQ around fp32 ops)
OP_TYPES = ("Conv",)
# ... except where measured otherwise (session 30, one thread): a Concat in uint8 saves a float transpose and
# copy of its widest tensor. The half-resolution fusion's (features next to the pictures' phases): 144 → 122 ms
# per 624² window, −0.002 dB; the up-sampling's (features next to the low-res image): 125 → 116 ms per 42² cells
QUANTISED_OPS = {"fusion": ("Conv", "Concat"), "cont_reconstruct": ("Conv", "Concat")}
PAD_TO = 16  # output channels of a narrow int8 convolution (``pad_narrow_convs``)


# ----------------------------------------------------------------------------------- helpers
def snap(value: float, bits: int = RANGE_BITS, up: bool = True) -> float:
    """``value`` rounded to ``bits`` significant bits, towards +inf (``up``) or −inf: an exact float32,
    the same for inputs that differ only in their last bits (unless they straddle a grid point)."""
    if value == 0 or not math.isfinite(value):
        return 0.0 if value == 0 else value
    mantissa, exponent = math.frexp(value)  # value = mantissa · 2^exponent, 0.5 ≤ |mantissa| < 1
    scaled = mantissa * 2**bits
    return math.ldexp(math.ceil(scaled) if up else math.floor(scaled), exponent - bits)


def fold_fp16_casts(model: onnx.ModelProto) -> int:
    """Replace ``Cast(fp16 initialiser) → float32`` by a float32 initialiser, so the quantiser sees
    weights as constants (``convert.fp16_initialisers`` stores them that way). Returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = node_attr(node, "to", None)
        if src is not None and src.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT:
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float32),
                                                             node.output[0]))
            if consumers.get(src.name, 0) == 1:
                graph.initializer.remove(src)
            folded += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return folded


def node_attr(node: onnx.NodeProto, name: str, default: int | None = 0) -> int | None:
    """An integer attribute of ``node`` (``default`` where it is not set)."""
    return next((a.i for a in node.attribute if a.name == name), default)


def output_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the convolutions nearest the graph outputs (no other Conv between them and an output):
    the layer that writes pixels keeps fp32, where 8-bit steps would show directly (measured: it
    halves the quantisation's PSNR cost for ~3 % of the MACs)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen, todo = [], set(), [o.name for o in model.graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
        else:
            todo += list(node.input)
    return sorted(found)


def with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have these fixed shapes, after shape inference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for value in m.graph.input:
        if value.name in shapes:
            for d, n in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                d.dim_value = int(n)
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shape of every input, output and inferred intermediate value of ``model`` (0 where unknown)."""
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}


def full_resolution_convs(model: onnx.ModelProto, side: int = 64) -> list[str]:
    """Names of the convolutions that read tensors at the graph's own input resolution (shapes inferred
    at ``side``² inputs). The fusion keeps these in fp32: Q/DQ pairs around them hold extra full-size
    copies (peak memory of one 832² fusion window 231 MB in fp32, 386 MB with them quantised, 243 MB
    without) for no speed (117 vs 118 ms); its half-resolution body is where int8 pays."""
    inputs = {v.name: (1, v.type.tensor_type.shape.dim[1].dim_value, side, side) for v in model.graph.input}
    inferred = with_shapes(model, inputs)
    dims = tensor_shapes(inferred)
    found = []
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            shape = dims.get(node.input[0])
            if not shape or len(shape) != 4 or 0 in shape[2:]:
                raise ValueError(f"no shape for the input of {node.name} (shape inference failed)")
            if shape[2:] == [side, side]:
                found.append(node.name)
    return sorted(found)


def fusion_fp32_convs(model: onnx.ModelProto) -> list[str]:
    """The fusion's full-resolution convolutions (none since it is exported at half resolution, session 30:
    models/fusion.py ``HalfResolutionFusion``) and those of its low-frequency anchor (a fixed blur at half
    resolution, ``LowPass``, exported under ``/lowpass/``): int8 would round the very difference the anchor
    exists to pass on, for no speed (a few taps per pixel)."""
    anchor = [n.name for n in model.graph.node if n.op_type == "Conv" and "/lowpass/" in n.name]
    return sorted(set(full_resolution_convs(model)) | set(anchor))


def input_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the convolutions that read a graph input directly."""
    inputs = {v.name for v in model.graph.input}
    return sorted(n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs)


def reconstruct_fp32_convs(model: onnx.ModelProto) -> list[str]:
    """The up-sampling's first convolution, which reads the guidance and feeds an inverse GDN (that squares
    its errors: quantised, it alone cost the variant 0.015 dB on the check crops, 0.025 → 0.010 dB in all,
    session 30), and its fixed bicubic kernel (a grouped convolution, a few taps per pixel)."""
    grouped = [n.name for n in model.graph.node if n.op_type == "Conv" and (node_attr(n, "group", 1) or 1) > 1]
    return sorted(set(input_convs(model)) | set(grouped))


def no_convs(model: onnx.ModelProto) -> list[str]:
    return []


# Convolutions kept in fp32, per graph (default: ``output_convs``, for a graph not listed). Since session 30 the
# output convolutions of the decode graphs are int8 too: each writes 12 channels (3 colours × 4 phases before a
# shuffle), padded to 16 for onnxruntime's fast kernel (``pad_narrow_convs``), which made them faster than fp32
# (one window, one thread: pixel tail 154.7 → 137.9 ms, continuous picture 114.8 → 99.4, fusion 134.6 → 119.1)
# for the tail's int8 cost 0.004 → 0.013 dB on the check crops (the others' unchanged). The pixel head's output
# convolutions feed the tail, not pixels: quantised, as they were inside the one-graph pixel decoder
KEEP_FP32 = {"fusion": fusion_fp32_convs, "pixel_head": no_convs, "pixel_tail": no_convs,
             "cont_reconstruct": reconstruct_fp32_convs}


def _centre_tiles(rgb: np.ndarray, side: int, tile: int) -> np.ndarray | None:
    h, w = (min(side, rgb.shape[0]) // tile * tile, min(side, rgb.shape[1]) // tile * tile)
    if not h or not w:
        return None
    y, x = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    return np.ascontiguousarray(rgb[y : y + h, x : x + w])


def fixed_crops(folder: Path, n: int, side: int = CALIBRATION_SIDE, tile: int = TILE) -> list[np.ndarray]:
    """``n`` images spread evenly over the sorted file list of ``folder``, each cut to its centred
    whole-tile area (at most ``side``²): the same crops, in the same order, on every machine."""
    from ..models.data import list_images, read_rgb

    paths = list_images(folder)
    if not paths:
        raise ValueError(f"no images in {folder}")
    crops = []
    for p in paths[:: max(1, len(paths) // n)]:
        crop = _centre_tiles(read_rgb(p), side, tile)
        if crop is not None:
            crops.append(crop)
        if len(crops) == n:
            break
    return crops


# -------------------------------------------------------------------- decoder inputs of a crop
def _picture(image: np.ndarray) -> np.ndarray:
    """A decoder's (1, 3, H, W) output as the runtime passes it on: 8-bit pixels back in [0, 1] (the
    runtime's own two conversions, so the calibration sees exactly what the fusion is handed)."""
    from ..runtime.codec import _to_float, _to_u8

    return _to_float(_to_u8(image))


def decoder_inputs(model: Any, rgb: np.ndarray, graphs: Sequence[str] = ()  # noqa: ANN401
                   ) -> dict[str, np.ndarray]:
    """What the decode-side ``graphs`` see for a crop of whole tiles, computed with the model's fp32
    graphs exactly as the codec computes them: the full index map (the predictor's check picks its
    sent tokens from it), its code vectors and the aligned guidance, and for the ``fusion`` its two
    input pictures, ``pixels`` and ``continuous`` (hybrid decode at the base rate point, mask none),
    computed only when ``graphs`` names it."""
    m, geo = model.manifest, model.geometry
    tile, px = geo.tile, geo.token_pixels
    h, w = rgb.shape[:2]
    assert h % tile == 0 and w % tile == 0, "crop must be whole tiles"
    tiles = [rgb[y : y + tile, x : x + tile] for y in range(0, h, tile) for x in range(0, w, tile)]
    batch = np.stack(tiles).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    idx = np.concatenate([model.run("vq_encoder", image=batch[k : k + 1])[0] for k in range(len(tiles))])
    g = tile // px
    rows, cols = h // tile, w // tile
    indices = idx.reshape(rows, cols, g, g).transpose(0, 2, 1, 3).reshape(1, rows * g, cols * g)
    out = {"indices": indices, "codes": np.ascontiguousarray(model.codes(indices))}
    if model.has_correction:
        d = geo.downscale
        low = cv2.resize(rgb, (w // d, h // d), interpolation=cv2.INTER_AREA)
        low = np.ascontiguousarray(low.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
        (y,) = model.run("cont_analysis", image=low)
        (z,) = model.run("hyper_analysis", y=y)
        t = model.tables
        z_hat = np.clip(np.round(z[0]), -t.z_radius, t.z_radius)
        mean, scale = model.hyper(z_hat)
        y_hat = slices.encode(model.context, t, BASE, y[0].astype(np.float64), mean, scale).y_hat
        (guidance,) = model.run("cont_synthesis", y_hat=y_hat.astype(np.float32)[None])
        out["guidance"] = np.ascontiguousarray(guidance)
        if model.has("pixel_head"):
            (out["features"],) = model.run("pixel_head", codes=out["codes"], guidance=out["guidance"])
        if "fusion" in graphs and "fusion" in m["graphs"]:
            (continuous,) = model.run("cont_reconstruct", guidance=out["guidance"])
            out["pixels"], out["continuous"] = _picture(pixel_picture(model, out)), _picture(continuous)
    return out


def pixel_picture(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:  # noqa: ANN401
    """The pixel decoder's picture (1, 3, H, W) from ``decoder_inputs``' codes and guidance (or the
    head's ``features`` already there): the tail of the head, or one graph (models before session 17)."""
    if not model.has("pixel_head"):
        return model.run("pixel_decoder", codes=inputs["codes"], guidance=inputs["guidance"])[0]
    features = inputs.get("features")
    if features is None:
        (features,) = model.run("pixel_head", codes=inputs["codes"], guidance=inputs["guidance"])
    return model.run("pixel_tail", features=features)[0]


def graph_feeds(graph: onnx.ModelProto | str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in (graph if isinstance(graph, onnx.ModelProto) else onnx.load(graph)).graph.input]
    return {n: inputs[n] for n in names}


# --------------------------------------------------------------------------------- quantise
def _reader(feeds: Sequence[dict[str, np.ndarray]]) -> Any:  # noqa: ANN401
    """A CalibrationDataReader over a fixed list of feeds, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


@contextmanager
def quiet_quantiser() -> Iterator[None]:
    """onnxruntime's quantiser logs "please pre-process" warnings at the root logger: we deliberately
    do not (its shape inference would rewrite the graph), so they are silenced while it runs."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger().setLevel(level)


def fuse_silu(model: onnx.ModelProto) -> int:
    """Each ``Mul(x, Sigmoid(x))`` (a SiLU) of ``model`` as one onnxruntime ``QuickGelu`` node (alpha 1,
    contrib domain ``com.microsoft``), in place; returns how many. Why: in a QDQ graph the dequantised x
    feeds two nodes, so onnxruntime gives each its own copy of the DequantizeLinear and then no longer
    fuses the pair, as it does in fp32 graphs: the pixel tail's last SiLU ran as a Sigmoid and a Mul over
    the largest tensor of the decode (the tail 8 % slower, session 30). Only int8 variants get this: they
    run on the CPU provider, which has the op."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    fused: dict[int, onnx.NodeProto] = {}  # id(Mul) → QuickGelu
    dropped: set[int] = set()
    for n in model.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for x, s in (n.input, n.input[::-1]):
            sig = producer.get(s)
            if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == x and readers[s] == 1:
                fused[id(n)] = onnx.helper.make_node("QuickGelu", [x], list(n.output), name=f"{n.name}/silu",
                                                     domain="com.microsoft", alpha=1.0)
                dropped.add(id(sig))
                break
    if fused:
        nodes = [fused.get(id(n), n) for n in model.graph.node if id(n) not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(fused)


def pad_narrow_convs(model: onnx.ModelProto, names: Sequence[str], multiple: int = PAD_TO) -> list[str]:
    """Give each named convolution of ``model`` (weights as float initialisers: after ``fold_fp16_casts``)
    whose output channels are not a multiple of ``multiple`` that many, the added filters zero, followed
    by a Slice back to its own channels: the same outputs, in place. Returns the names padded. Why:
    onnxruntime's int8 convolution is slow at a few output channels and fast at 16 (one 128 → C 3×3 at
    248², one thread: fp32 21.4 ms, int8 C = 12 28.8 ms, int8 C = 16 10.5 ms; session 30), and every
    decode graph ends in a 12-channel convolution (3 colours × 4 phases before a shuffle)."""
    inits = {t.name: t for t in model.graph.initializer}
    padded, nodes = [], []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and node.name in names else None
        c_out = weight.dims[0] if weight is not None else 0
        if weight is None or c_out % multiple == 0:
            nodes.append(node)
            continue
        extra = multiple - c_out % multiple
        w = numpy_helper.to_array(weight)
        model.graph.initializer.append(numpy_helper.from_array(
            np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)]), f"{weight.name}/padded"))
        inputs = [node.input[0], f"{weight.name}/padded"]
        if len(node.input) > 2:
            b = numpy_helper.to_array(inits[node.input[2]])
            model.graph.initializer.append(numpy_helper.from_array(np.concatenate([b, np.zeros(extra, b.dtype)]),
                                                                   f"{node.input[2]}/padded"))
            inputs.append(f"{node.input[2]}/padded")
        wide = f"{node.output[0]}/padded"
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        del conv.input[:], conv.output[:]
        conv.input.extend(inputs)
        conv.output.append(wide)
        bounds = [numpy_helper.from_array(np.array([v], np.int64), f"{node.name}/slice_{k}")
                  for k, v in (("starts", 0), ("ends", c_out), ("axes", 1))]
        model.graph.initializer.extend(bounds)
        nodes += [conv, onnx.helper.make_node("Slice", [wide, *(t.name for t in bounds)], [node.output[0]],
                                              name=f"{node.name}/slice")]
        padded.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return padded


def write_variant(q: onnx.ModelProto, dst: Path, keep: set[str]) -> tuple[int, int]:
    """Write an int8 variant as reproducibly as the fp32 graphs: our producer, no metadata, the float
    weights it left unquantised back to fp16 as the fp32 graph stores them (exact: not one computed bit
    changes), except ``keep`` (quantisation parameters, which stay as onnxruntime wrote them).
    Returns (bytes written, initialisers halved)."""
    from .convert import fp16_initialisers  # (imports torch: only an export quantises)

    q.producer_name, q.producer_version = "hybridflow-export", ""
    del q.metadata_props[:]
    halved = fp16_initialisers(q, keep=keep)
    onnx.checker.check_model(q)
    data = q.SerializeToString()
    Path(dst).write_bytes(data)
    return len(data), halved


def quantise_graph(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]],
                   exclude_nodes: Sequence[str] | None = None, op_types: Sequence[str] = OP_TYPES) -> dict[str, Any]:
    """``src`` (fp32 ONNX) → ``dst`` (QDQ int8), calibrated on ``feeds``; returns what was done.
    ``exclude_nodes=None`` keeps the output convolutions in fp32 (``output_convs``)."""
    import onnxruntime.quantization as oq
    from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data

    model = onnx.load(src)
    folded = fold_fp16_casts(model)
    exclude_nodes = output_convs(model) if exclude_nodes is None else list(exclude_nodes)
    padded = pad_narrow_convs(model, [n.name for n in model.graph.node
                                      if n.op_type == "Conv" and n.name not in exclude_nodes])
    common = dict(quant_format=oq.QuantFormat.QDQ, per_channel=True, reduce_range=False,
                  activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                  op_types_to_quantize=list(op_types), nodes_to_exclude=list(exclude_nodes),
                  calibrate_method=oq.CalibrationMethod.MinMax, calibration_providers=["CPUExecutionProvider"])
    with quiet_quantiser(), tempfile.TemporaryDirectory(prefix="hf-quant-") as tmp:
        fp32, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, fp32)
        # pass 1 measures the ranges (and writes a throw-away model); pass 2 quantises with the snapped ones
        oq.quantize_static(fp32, Path(tmp) / "measured.onnx", _reader(feeds), calibration_cache_path=cache,
                           **common)
        ranges = load_tensors_data(cache)
        for td in ranges.data.values():
            lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
            td.lowest = np.array(snap(min(lo, 0.0), up=False), np.float32)
            td.highest = np.array(snap(max(hi, 0.0), up=True), np.float32)
        save_tensors_data(ranges, cache)
        oq.quantize_static(fp32, Path(tmp) / "int8.onnx", None, calibration_cache_path=cache, **common)
        q = onnx.load(Path(tmp) / "int8.onnx")
    silu = fuse_silu(q)
    # the float weights left unquantised: deconvolutions, the excluded output convolutions
    qdq = {name for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input}
    size, halved = write_variant(q, dst, qdq)
    counts: dict[str, int] = {}
    for node in q.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"bytes": size, "folded_fp16_casts": folded, "fp16_initialisers": halved,
            "calibration_feeds": len(feeds),
            "quantize_linear": counts.get("QuantizeLinear", 0), "excluded": list(exclude_nodes), "fused_silu": silu,
            "padded": padded}


# ------------------------------------------------------------------------------ quality check
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def _to_u8(chw: np.ndarray) -> np.ndarray:
    return (np.clip(chw, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def quality(fp32_path: Path, int8_path: Path, crops: Sequence[np.ndarray],
            inputs: Sequence[dict[str, np.ndarray]],
            finish: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """fp32 vs int8 decodes of ``crops`` (from their own ``inputs``): PSNR of each against the crop,
    and the largest pixel difference between the two decodes. ``finish`` turns a graph's output
    into the picture where it is not one (the pixel head's features: the fp32 tail)."""
    from ..runtime.session import CPU, open_session

    fp32 = open_session(fp32_path, CPU, threads=None)
    int8 = open_session(int8_path, CPU, threads=None, int8_kernels=True)
    names = [i.name for i in fp32.get_inputs()]
    pairs = []
    for inp in inputs:
        feed = {n: inp[n] for n in names}
        a, b = fp32.run(None, feed)[0], int8.run(None, feed)[0]
        pairs.append(tuple(_to_u8((finish(x) if finish else x)[0]) for x in (a, b)))
    return _report(crops, pairs)


def _report(crops: Sequence[np.ndarray], pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean PSNR of the fp32 and the int8 picture of each crop against it, and their largest difference."""
    p32 = [psnr(a, rgb) for rgb, (a, _) in zip(crops, pairs)]
    p8 = [psnr(b, rgb) for rgb, (_, b) in zip(crops, pairs)]
    diff = max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in pairs)
    return {"crops": len(crops), "psnr_fp32": float(np.mean(p32)), "psnr_int8": float(np.mean(p8)),
            "psnr_loss": float(np.mean(p32) - np.mean(p8)), "max_abs_pixel_diff": diff}


def predictor_quality(model: Any, int8_path: Path, crops: Sequence[np.ndarray],  # noqa: ANN401
                      inputs: Sequence[dict[str, np.ndarray]], mask: str = PREDICTOR_CHECK_MASK) -> dict[str, Any]:
    """``quality`` for the predictor, whose output is code vectors, not pixels: each crop's tiles with
    the indices of ``mask`` sent go through the fp32 and the int8 predictor, and both code maps through
    the fp32 pixel decoder; PSNR of each picture against the crop."""
    from ..runtime.masking import sent_mask
    from ..runtime.session import CPU, open_session

    int8 = open_session(int8_path, CPU, threads=None, int8_kernels=True)
    g = model.geometry.tile // model.geometry.token_pixels
    pairs = []
    for inp in inputs:
        _, gh, gw = inp["indices"].shape
        tiles = [(y, x) for y in range(0, gh, g) for x in range(0, gw, g)]
        feed = {"indices": np.stack([inp["indices"][0, y : y + g, x : x + g] for y, x in tiles]),
                "visible": np.broadcast_to(sent_mask(mask, g), (len(tiles), g, g)).copy(),
                "guidance": np.stack([inp["guidance"][0, :, y : y + g, x : x + g] for y, x in tiles])}
        pictures = []
        for codes in (model.run("predictor", **feed)[0], int8.run(None, feed)[0]):
            image = np.zeros((1, codes.shape[1], gh, gw), np.float32)
            for (y, x), c in zip(tiles, codes):
                image[0, :, y : y + g, x : x + g] = c
            pictures.append(_to_u8(pixel_picture(model, {"codes": image, "guidance": inp["guidance"]})[0]))
        pairs.append((pictures[0], pictures[1]))
    return {**_report(crops, pairs), "mask": mask}


# ---------------------------------------------------------------------------------- export hook
def applicable(manifest: dict[str, Any], graphs: Sequence[str] = QUANTISABLE) -> list[str]:
    """Those of ``graphs`` that get an int8 variant in this model: the ones it has, and its
    cont_reconstruct only where that draws full-resolution pixels (see ``FEEDABLE``)."""
    return [g for g in graphs if g in manifest["graphs"]
            and (g != "cont_reconstruct" or int(manifest.get("reconstruct_pixels", 0)) == 1)]


def add_int8(directory: Path, manifest: dict[str, Any], calibration: Sequence[np.ndarray],
             check: Sequence[np.ndarray] = (), graphs: Sequence[str] = QUANTISABLE,
             max_psnr_loss: float | None = MAX_PSNR_LOSS) -> dict[str, Any]:
    """Quantise ``graphs`` of the exported model in ``directory``, calibrated on the ``calibration``
    crops; measure each against fp32 on the ``check`` crops and keep it only if it costs at most
    ``max_psnr_loss`` dB there (None: keep regardless). Adds the kept variants to ``manifest["graphs"]``,
    recomputes the model id, and returns the report (also stored as ``manifest["parity"]["int8"]``)."""
    from ..runtime.model import Model
    from . import int8_weights
    from . import manifest as manifest_mod

    directory = Path(directory)
    bad = set(graphs) & set(NEVER)
    if bad:
        raise ValueError(f"refusing to quantise encoder-side graphs {sorted(bad)}: the entropy path must stay exact")
    unknown = set(graphs) - set(FEEDABLE)
    if unknown:
        raise ValueError(f"no calibration inputs for {sorted(unknown)}: int8 variants exist for {', '.join(FEEDABLE)}")
    todo = applicable(manifest, graphs)
    if not todo or not calibration:
        return {}
    model = Model.load(directory, provider="cpu")
    model.precision = "fp32"
    cal_inputs = [decoder_inputs(model, c, todo) for c in calibration]
    check_inputs = [decoder_inputs(model, c, todo) for c in check]
    report: dict[str, Any] = {}
    for graph in todo:
        src = directory / manifest["graphs"][graph]["file"]
        name = f"{graph}{SUFFIX}"
        dst = directory / f"{name}.onnx"
        entry: dict[str, Any]
        if graph == "predictor":  # dynamic: no calibration
            entry = {"quantisation": int8_weights.dynamic_variant(src, dst)}
            if check:
                entry["quality"] = predictor_quality(model, dst, check, check_inputs)
        else:
            feeds = [graph_feeds(src, i) for i in cal_inputs]
            keep = KEEP_FP32.get(graph)
            entry = {"quantisation": quantise_graph(src, dst, feeds, None if keep is None else keep(onnx.load(src)),
                                                    QUANTISED_OPS.get(graph, OP_TYPES))}
            if check:
                tail = (lambda f: model.run("pixel_tail", features=f)[0]) if graph == "pixel_head" else None
                entry["quality"] = quality(src, dst, check, check_inputs, tail)
        loss = entry.get("quality", {}).get("psnr_loss", 0.0)
        # (a graph with nothing to quantise, e.g. a tail that is only the fp32 output convolution: no variant)
        kept = (max_psnr_loss is None or loss <= max_psnr_loss) and entry["quantisation"].get("quantize_linear", 1) > 0
        entry["kept"] = kept
        if kept:
            manifest["graphs"][name] = {
                "file": dst.name, "bytes": dst.stat().st_size, "opset": manifest["graphs"][graph]["opset"],
                "variant_of": graph, "precision": "int8",
                "scheme": int8_weights.SCHEME if graph == "predictor" else
                          "static QDQ: per-channel s8 weights, u8 activations, MinMax ranges snapped to "
                          f"{RANGE_BITS} significant bits",
                "inputs": manifest["graphs"][graph]["inputs"], "outputs": manifest["graphs"][graph]["outputs"],
            }
        else:
            dst.unlink()
        report[graph] = entry
    manifest["model_id"] = manifest_mod.model_id(manifest, directory)
    manifest.setdefault("parity", {})["int8"] = report
    return report


@dataclass
class Int8Request:
    """What ``hf-export --quantize int8`` asks for: calibration crops (training images) and quality-check
    crops (validation images, never Kodak)."""

    calibration: list[np.ndarray]
    check: list[np.ndarray] = field(default_factory=list)
    max_psnr_loss: float | None = MAX_PSNR_LOSS
    graphs: tuple[str, ...] = QUANTISABLE

    def apply(self, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        return add_int8(directory, manifest, self.calibration, self.check, self.graphs, self.max_psnr_loss)


MODES = ("int8", "none")


def request(mode: str, calibration: Path, check: Path | None) -> Int8Request | None:
    """The CLI's ``--quantize MODE --calibration DIR`` (check crops from ``check``, if it exists)."""
    if mode not in MODES:
        raise ValueError(f"unknown --quantize {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return None
    if not Path(calibration).is_dir():
        raise ValueError(f"no calibration images at {calibration}: pass --calibration DIR (training images) "
                         "or --quantize none")
    checks = fixed_crops(check, QUALITY_IMAGES) if check is not None and Path(check).is_dir() else []
    return Int8Request(fixed_crops(calibration, CALIBRATION_IMAGES), checks)


def summary(report: dict[str, Any]) -> str:
    lines = []
    for graph, e in report.items():
        q = e.get("quality")
        how = (f"{q['crops']} crops: {q['psnr_fp32']:.2f} → {q['psnr_int8']:.2f} dB "
               f"({-q['psnr_loss']:+.3f}), max pixel diff {q['max_abs_pixel_diff']}") if q else "not checked"
        lines.append(f"  {graph}{SUFFIX}: {'kept' if e['kept'] else 'REJECTED'}; {how}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover  (debug: print a model's int8 report)
    import sys

    print(json.dumps(json.loads(Path(sys.argv[1], "manifest.json").read_text()).get("parity", {}).get("int8"),
                     indent=1))
