"""Every exported graph under onnxruntime (CPU) against the PyTorch modules on a device (CUDA).

The GPU window's check (tools/gpu_burst.sh): the networks trained there are exported there and each
graph is run by onnxruntime's CPU provider and by the same PyTorch wrapper on the GPU, on the spec's
random inputs and on real validation tiles. Only torch, onnx and onnxruntime are needed: nothing of
the runtime's entropy coder, no typer, no onnxsim (``python -m hybridflow.export.device_parity``).

``--ckpts DIR`` holds stage checkpoints (``vq.pt``, ``cont.pt``, ``predictor.pt``, ``correction.pt``, as
``hf-train burst`` writes them); the statistics a release bundle adds do not change any graph."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.train.options import parse


@dataclass
class ParityConfig:
    """ONNX Runtime (CPU) vs PyTorch on a device, for every graph of stage checkpoints."""

    ckpts: str = field(metadata={"help": "folder with vq.pt, cont.pt [predictor.pt correction.pt]"})
    out: str = field(metadata={"help": "JSON report to write"})
    device: str = field(default="cuda", metadata={"help": "device of the PyTorch side"})
    data: str = field(default="", metadata={"help": "data root whose val/ gives real tiles (default: HF_DATA)"})
    fp16_weights: bool = field(default=True, metadata={"help": "export as hf-export does (fp16 + Cast)"})


def components_from_checkpoints(folder: Path):  # noqa: ANN201  (models.bundle.Components)
    """The networks of stage checkpoints as bundle ``Components`` (fp32 weights as saved; default statistics)."""
    from ..models import checkpoint
    from ..models.bundle import Components
    from ..models.correction import CorrectionNet
    from ..models.hyperprior import ContConfig, ContinuousCodec
    from ..models.transformer import MaskedTokenPredictor, TransformerConfig
    from ..models.vq import VQAutoencoder, VQConfig
    from ..runtime.complexity import ComplexityModel

    vq = checkpoint.load_model(folder / "vq.pt", VQAutoencoder, VQConfig).float()
    cont = checkpoint.load_model(folder / "cont.pt", ContinuousCodec, ContConfig).float()
    predictor = correction = None
    if (folder / "predictor.pt").exists():
        predictor = checkpoint.load_model(folder / "predictor.pt", MaskedTokenPredictor, TransformerConfig).float()
    if (folder / "correction.pt").exists():
        correction = CorrectionNet.from_state(vq.cfg, cont.cfg.channels,
                                              checkpoint.load(folder / "correction.pt")["model"]).float().eval()
    counts = np.ones(vq.cfg.n_codes, np.int64)
    return Components(vq, cont, predictor, correction, ComplexityModel(), counts, folder.name, False).eval()


def run(cfg: ParityConfig) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from ..models.data import data_root, list_images, read_rgb
    from .convert import to_onnx
    from .graphs import compare_outputs, graph_specs, real_inputs

    # TF32 would make the reference itself differ from fp32 by ~1e-3: compare real fp32 on both sides.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    c = components_from_checkpoints(Path(cfg.ckpts))
    specs = graph_specs(c)
    val = (Path(cfg.data) if cfg.data else data_root()) / "val"
    images = [read_rgb(p) for p in list_images(val)[:4]] if val.is_dir() else []
    real = real_inputs(c, images) if images else {}
    report: dict[str, Any] = {"device": cfg.device, "torch": torch.__version__, "onnxruntime": ort.__version__,
                              "real_tiles": len(images), "graphs": {}}
    if cfg.device.startswith("cuda"):
        report["device_name"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            t = time.time()
            info = to_onnx(spec, Path(tmp) / f"{spec.name}.onnx", simplify=True, fp16_weights=cfg.fp16_weights)
            sess = ort.InferenceSession(str(Path(tmp) / f"{spec.name}.onnx"), providers=["CPUExecutionProvider"])
            module = spec.module.to(cfg.device).eval()
            entry: dict[str, Any] = {"bytes": info["bytes"], "simplified": info["simplified"]}
            cases = {"random": {k: v.numpy() for k, v in spec.inputs.items()}}
            if spec.name in real:
                cases["real"] = real[spec.name]
            for case, inputs in cases.items():
                got = sess.run(None, inputs)
                with torch.no_grad():
                    ref = module(*(torch.from_numpy(np.ascontiguousarray(v)).to(cfg.device) for v in inputs.values()))
                ref = [r.float().cpu().numpy() if r.is_floating_point() else r.cpu().numpy()
                       for r in (ref if isinstance(ref, tuple) else (ref,))]
                entry[case] = {name: compare_outputs(r, g) for name, r, g in zip(spec.outputs, ref, got)}
            entry["seconds"] = round(time.time() - t, 2)
            report["graphs"][spec.name] = entry
            module.cpu()
    Path(cfg.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    report = run(parse(ParityConfig, argv, "python -m hybridflow.export.device_parity"))
    for name, entry in report["graphs"].items():
        errs = {case: entry[case] for case in ("random", "real") if case in entry}
        print(f"{name:17s} {errs}")


if __name__ == "__main__":
    main(sys.argv[1:])
