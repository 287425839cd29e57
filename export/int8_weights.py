"""The predictor's linear layers in int8: weights stored as int8, products computed in int8 on the CPU.

Why: the predictor is the one decode graph whose work is matrix products (19 576 multiply-adds per
pixel, ≈ 18 % of a Kodak decode, session 16); onnxruntime's dynamic int8 (activations quantised per
call, u8·s8 kernels) runs it in two thirds of the time (6 tiles 54 → 35 ms; per Kodak decode 0.07 → 0.05 s).
A variant next to the fp32 graph did not fit the
tracked tree (≤ 32 MiB): so the fp32 graph stores the same int8 weights too, half the bytes of fp16.

How, in three steps that share one rounding rule (``round_columns``: per output channel, a power-of-two
scale, |q| ≤ 127):

1. ``round_predictor`` puts the bundle's predictor linear weights on that grid before the export.
   Power-of-two scales make every rounded weight exact in fp16, so the bundle (fp16) holds exactly
   what the graphs compute with, ``hf-train rebundle`` gives it back bit for bit, and rounding again
   changes nothing: a rebuilt bundle exports to the same bytes.
2. ``store_int8`` rewrites the exported fp32 graph: each of those weights becomes an int8 tensor, its
   scales and a ``DequantizeLinear`` (the runtime folds it when the session opens: as fast as fp32).
3. ``dynamic_variant`` writes ``predictor_int8.onnx``: onnxruntime's ``quantize_dynamic`` over the same
   linear layers, with the same int8 weights and scales. The two products with the codebook (expected
   codes, code logits) stay float: quantising them cost 0.04 dB on val, the linear layers alone nothing
   measurable (session 17, models/TRAINING.md).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .quantize import node_attr

QMAX = 127
MIN_SCALE = 2.0**-24  # fp16's smallest step: with scales ≥ this every q·scale is an exact fp16 value
SCHEME = ("dynamic: the linear layers' int8 weights (per output channel, power-of-two scales) times "
          "activations quantised to u8 per call; products with the codebook in float")


def round_columns(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` → (q int8, scale float32) with ``w ≈ q · scale`` per slice along ``axis`` (the output
    channels): scale = the smallest power of two with max |w| ≤ 127 · scale. Idempotent: q · scale
    rounds to itself (its largest |q| is ≥ 64, so the same power of two is chosen)."""
    w = np.asarray(w, np.float32)
    other = tuple(d for d in range(w.ndim) if d != axis % w.ndim)
    peak = np.abs(w).max(axis=other, keepdims=True)
    with np.errstate(divide="ignore"):
        scale = np.exp2(np.ceil(np.log2(peak / QMAX))).astype(np.float32)
    scale = np.maximum(np.nan_to_num(scale, neginf=MIN_SCALE), np.float32(MIN_SCALE))
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale.reshape(-1)


def _dequantised(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def linear_keys(module: Any) -> list[str]:  # noqa: ANN401  (a torch module; torch stays an export-time import)
    """State-dict keys of the weights of ``module``'s ``nn.Linear`` layers."""
    import torch.nn as nn

    return sorted(f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Linear))


def round_predictor(state: dict[str, Any], keys: Iterable[str]) -> int:
    """Round the fp16 weights ``keys`` of a predictor state dict (torch layout: out × in) onto the
    int8 grid, in place. Returns how many changed (0 for a bundle already rounded)."""
    import torch

    changed = 0
    for k in keys:
        w = state[k].float().numpy()
        exact = torch.from_numpy(_dequantised(*round_columns(w, axis=0), 0))
        rounded = exact.to(state[k].dtype)
        if not torch.equal(rounded.float(), exact):
            raise ValueError(f"predictor weight {k}: its int8 rounding is not exact in {state[k].dtype}")
        changed += int(not torch.equal(rounded, state[k]))
        state[k] = rounded
    return changed


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


def store_int8(model: onnx.ModelProto, weights: Iterable[np.ndarray]) -> int:
    """Replace each initialiser that a MatMul/Gemm multiplies by and that holds one of ``weights``
    (torch layout, already rounded: ``round_predictor``), transposed as the exporter writes it, by
    int8 values, scales and a ``DequantizeLinear``. An fp16 initialiser read through a Cast (as
    ``convert.fp16_initialisers`` stores it) is matched through that Cast. Returns how many; raises
    if one of ``weights`` is not found (the graph would silently keep it in float)."""
    graph = model.graph
    wanted = {_sha(np.asarray(w, np.float32).T) for w in weights}
    inits = {t.name: t for t in graph.initializer}
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast" and n.input[0] in inits}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    replaced: dict[str, onnx.NodeProto] = {}  # weight value name → its DequantizeLinear
    found: set[str] = set()
    drop_casts: set[int] = set()
    drop_inits: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] in replaced:
            continue
        name = node.input[1]
        cast = casts.get(name)
        source = inits.get(cast.input[0] if cast is not None else name)
        if source is None or len(source.dims) != 2 or (node.op_type == "Gemm" and node_attr(node, "transB")):
            continue
        value = numpy_helper.to_array(source).astype(np.float32)
        sha = _sha(value)
        if sha not in wanted:
            continue
        found.add(sha)
        q, scale = round_columns(value, axis=1)
        if not np.array_equal(_dequantised(q, scale, 1), value):
            raise ValueError(f"{name}: weights not on the int8 grid (export through ``grids.components``)")
        stem = source.name.removesuffix("__fp16")
        graph.initializer.extend([numpy_helper.from_array(q, f"{stem}__int8"),
                                  numpy_helper.from_array(scale, f"{stem}__scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{stem}__zero")])
        replaced[name] = helper.make_node("DequantizeLinear", [f"{stem}__int8", f"{stem}__scale", f"{stem}__zero"],
                                          [name], name=f"{stem}__dequantize", axis=1)
        if cast is not None:
            drop_casts.add(id(cast))
        if consumers.get(source.name, 0) <= 1:
            drop_inits.add(source.name)
    if found != wanted:
        raise ValueError(f"{len(wanted - found)} of {len(wanted)} int8 weights are not the right-hand side of "
                         "any MatMul/Gemm of the exported graph")
    nodes = list(replaced.values()) + [n for n in graph.node if id(n) not in drop_casts]
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [t for t in graph.initializer if t.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(replaced)


def stored_int8(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Output name of each weight ``DequantizeLinear`` that ``store_int8`` wrote → (q, scale, the names
    of its inputs: q's, the scale's and the zero point's initialisers)."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[1] in inits:
            q, scale = numpy_helper.to_array(inits[n.input[0]]), numpy_helper.to_array(inits[n.input[1]])
            if q.dtype == np.int8 and q.ndim == 2 and node_attr(n, "axis") == 1:
                found[n.output[0]] = (q, scale, list(n.input))
    return found


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``stored_int8``'s layout (int8 in × out, one scale per output column) → float values: what the
    bundle holds (transposed), so ``bundle_index`` finds the bundle's weights among these."""
    return _dequantised(q, scale, 1)


def _fold_dequantize(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Turn each weight ``DequantizeLinear`` back into a float32 initialiser (``quantize_dynamic`` wants
    float weights to quantise); returns weight name → (q, scale)."""
    found = stored_int8(model)
    graph = model.graph
    used = {x for _, _, inputs in found.values() for x in inputs}
    nodes = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in found)]
    inits = [t for t in graph.initializer if t.name not in used]
    inits += [numpy_helper.from_array(_dequantised(q, s, 1), name) for name, (q, s, _) in found.items()]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return {name: (q, s) for name, (q, s, _) in found.items()}


def dynamic_variant(src: Path, dst: Path) -> dict[str, Any]:
    """``src`` (an fp32 graph whose linear weights ``store_int8`` stored) → ``dst``: those products in
    dynamic int8 with the very same int8 weights and scales; every other product stays float."""
    import onnxruntime.quantization as oq

    from .quantize import fold_fp16_casts, quiet_quantiser, write_variant

    model = onnx.load(src)
    fold_fp16_casts(model)
    weights = _fold_dequantize(model)
    if not weights:
        raise ValueError(f"{src}: no int8 weights to compute with (export it with this version of hf-export)")
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    if any(not n.name for n in products):
        raise ValueError(f"{src}: unnamed MatMul/Gemm nodes; cannot choose which to quantise")
    exclude = [n.name for n in products if n.input[1] not in weights]
    with quiet_quantiser(), tempfile.TemporaryDirectory(prefix="hf-dyn-") as tmp:
        onnx.save(model, Path(tmp) / "fp32.onnx")
        oq.quantize_dynamic(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", per_channel=True,
                            reduce_range=False, weight_type=oq.QuantType.QInt8,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude)
        q = onnx.load(Path(tmp) / "int8.onnx")
    inits = {t.name: t for t in q.graph.initializer}
    for name, (values, scale) in weights.items():  # onnxruntime picked its own scales: ours go in
        qt, st = inits.get(f"{name}_quantized"), inits.get(f"{name}_scale")
        if qt is None or st is None or list(qt.dims) != list(values.shape) or list(st.dims) != list(scale.shape):
            raise ValueError(f"{src}: quantize_dynamic did not quantise {name} per output channel as expected")
        qt.CopyFrom(numpy_helper.from_array(values, qt.name))
        st.CopyFrom(numpy_helper.from_array(scale.astype(np.float32), st.name))
    int8_inputs = {x for n in q.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear")
                   for x in n.input}
    scales = {x for n in q.graph.node if n.op_type == "Mul" for x in n.input if x.endswith("_scale")}
    size, halved = write_variant(q, dst, int8_inputs | scales)
    counts = {op: sum(n.op_type == op for n in q.graph.node) for op in ("MatMulInteger", "MatMul", "Gemm")}
    return {"bytes": size, "int8_products": counts["MatMulInteger"],
            "float_products": counts["MatMul"] + counts["Gemm"], "fp16_initialisers": halved,
            "int8_weights": len(weights)}
