"""A PyTorch module → one checked, simplified ONNX file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

from .graphs import GraphSpec

OPSET = 17


def to_onnx(spec: GraphSpec, path: Path, simplify: bool = True) -> dict[str, object]:
    """Export with the TorchScript-based exporter (deterministic bytes, dynamic axes as given), then
    onnxsim; if simplification fails or changes the interface, keep the plain graph and say so."""
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
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    Path(path).write_bytes(data)
    return {
        "file": Path(path).name,
        "bytes": len(data),
        "opset": OPSET,
        "simplified": simplified,
        "inputs": {i.name: _shape(i) for i in model.graph.input},
        "outputs": {o.name: _shape(o) for o in model.graph.output},
    }


def _shape(value: onnx.ValueInfoProto) -> list[object]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]
