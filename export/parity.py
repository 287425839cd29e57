"""Exported graphs vs PyTorch: per graph (random and real inputs) and end to end through the codec.

``TorchModel`` is a runtime ``Model`` whose graphs are run by the PyTorch wrapper modules instead of
onnxruntime, so the very same ``Codec`` procedure becomes the PyTorch reference pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.codec import Codec
from ..runtime.model import Model
from .graphs import GraphSpec, compare_outputs


class TorchModel(Model):
    modules: dict[str, torch.nn.Module]

    @classmethod
    def from_specs(cls, directory: Path, specs: list[GraphSpec]) -> TorchModel:
        base = Model.load(directory, provider="cpu")
        model = cls(base.directory, base.manifest, "cpu")
        model.modules = {s.name: s.module.eval() for s in specs}
        return model

    def has(self, graph: str) -> bool:
        return graph in self.modules

    @torch.no_grad()
    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        out = self.modules[graph](*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _time(fn: Any, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def graph_parity(directory: Path, specs: list[GraphSpec], real: dict[str, dict[str, np.ndarray]],
                 timing: bool = True) -> dict[str, Any]:
    """For each graph: errors on the spec's random inputs and on ``real[name]`` inputs if given,
    plus seconds per call for onnxruntime (CPU) and PyTorch eager."""
    onnx_model = Model.load(directory, provider="cpu")
    torch_model = TorchModel.from_specs(directory, specs)
    report: dict[str, Any] = {}
    for spec in specs:
        cases = {"random": {k: v.numpy() for k, v in spec.inputs.items()}}
        if spec.name in real:
            cases["real"] = real[spec.name]
        entry: dict[str, Any] = {}
        for case, inputs in cases.items():
            ref = torch_model.run(spec.name, **inputs)
            got = onnx_model.run(spec.name, **inputs)
            entry[case] = {name: compare_outputs(r, g) for name, r, g in zip(spec.outputs, ref, got)}
        if timing:
            inputs = cases.get("real", cases["random"])
            entry["ort_s"] = _time(lambda: onnx_model.run(spec.name, **inputs))  # noqa: B023
            entry["torch_s"] = _time(lambda: torch_model.run(spec.name, **inputs))  # noqa: B023
        report[spec.name] = entry
    return report


def end_to_end(directory: Path, specs: list[GraphSpec], images: list[np.ndarray],
               masks: tuple[str, ...] = ("1_4",)) -> dict[str, Any]:
    """Bytes from the ONNX codec decoded by ONNX and by PyTorch; bytes from the PyTorch encoder
    decoded by ONNX (the entropy path must agree exactly, or decoding fails)."""
    ort_codec = Codec.load(directory, provider="cpu")
    ref_codec = Codec(TorchModel.from_specs(directory, specs))
    diffs, mean_diffs, same_bytes = [], [], []
    for img in images:
        for mask in masks:
            data = ort_codec.compress(img, mask=mask)
            a, b = ort_codec.decompress(data), ref_codec.decompress(data)
            d = np.abs(a.astype(np.int16) - b.astype(np.int16))
            diffs.append(int(d.max()))
            mean_diffs.append(float(d.mean()))
            ref_data = ref_codec.compress(img, mask=mask)
            ort_codec.decompress(ref_data)  # raises if the entropy parameters disagreed
            same_bytes.append(ref_data == data)
    return {"images": len(images), "masks": list(masks), "max_abs_pixel_diff": max(diffs),
            "mean_abs_pixel_diff": float(np.mean(mean_diffs)),
            "torch_encoder_bytes_equal_ort": float(np.mean(same_bytes))}
