"""A PyTorch module → one checked, simplified ONNX file."""

from __future__ import annotations

import io
import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .graphs import GraphSpec
from .int8_weights import store_int8

OPSET = 17
FP16_MIN_ELEMENTS = 64  # smaller float constants (scales, epsilons) are not worth a Cast node


def to_onnx(spec: GraphSpec, path: Path, simplify: bool = True, fp16_weights: bool = True) -> dict[str, object]:
    """Export with the TorchScript-based exporter (deterministic bytes, dynamic axes as given), then
    onnxsim; if simplification fails or changes the interface, keep the plain graph and say so.
    With ``fp16_weights`` the weights are stored in fp16 where that is exact (see ``fp16_initialisers``);
    the spec's ``int8_weights`` in int8 (export/int8_weights.py)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module.eval(), tuple(spec.inputs.values()), buf, dynamo=False,
                          input_names=list(spec.inputs), output_names=spec.outputs,
                          dynamic_axes=spec.dynamic, opset_version=OPSET, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    simplified = False
    if simplify:
        try:
            import onnxsim

            candidate, ok = onnxsim.simplify(model)
            if ok and [i.name for i in candidate.graph.input] == list(spec.inputs):
                model, simplified = candidate, True
            else:
                warnings.warn(f"{spec.name}: onnxsim could not verify the simplified graph; kept the original",
                              stacklevel=2)
        except Exception as e:  # onnxsim is optional and sometimes fails on exotic graphs
            warnings.warn(f"{spec.name}: onnxsim failed ({e}); kept the unsimplified graph", stacklevel=2)
    model.producer_name = "hybridflow-export"
    halved = fp16_initialisers(model) if fp16_weights else 0
    int8 = store_int8(model, [w.numpy() for w in spec.int8_weights]) if spec.int8_weights else 0
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    Path(path).write_bytes(data)
    return {
        "file": Path(path).name,
        "bytes": len(data),
        "opset": OPSET,
        "simplified": simplified,
        "fp16_initialisers": halved,
        **({"int8_weights": int8} if int8 else {}),
        "inputs": {i.name: _shape(i) for i in model.graph.input},
        "outputs": {o.name: _shape(o) for o in model.graph.output},
    }


def fp16_initialisers(model: onnx.ModelProto, min_elements: int = FP16_MIN_ELEMENTS,
                      keep: Collection[str] = ()) -> int:
    """Store every float32 initialiser whose values are exactly fp16 in fp16, followed by a Cast to
    float32 under the original name. The weights come from an fp16 bundle, so this halves the files
    without changing one bit of what the graph computes: onnxruntime folds the Casts when it opens
    the session. Tensors that are not exact (e.g. products folded by onnxsim), integer and small
    tensors, and those named in ``keep``, stay as they are. Returns how many initialisers were converted."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    taken = inputs | {n for node in graph.node for n in node.output} | {t.name for t in graph.initializer}
    kept, casts = [], []
    for t in graph.initializer:
        value = numpy_helper.to_array(t)
        with np.errstate(over="ignore"):  # out-of-range values become inf and fail the exactness check
            half = value.astype(np.float16)
        if (t.data_type != TensorProto.FLOAT or value.size < min_elements or t.name in inputs or t.name in keep
                or not np.array_equal(half.astype(np.float32), value)):
            kept.append(t)
            continue
        name = f"{t.name}__fp16"
        while name in taken:
            name += "_"
        taken.add(name)
        kept.append(numpy_helper.from_array(half, name))
        casts.append(helper.make_node("Cast", [name], [t.name], name=f"{name}__cast", to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def _shape(value: onnx.ValueInfoProto) -> list[object]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]
