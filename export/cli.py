"""``hf-export --ckpt BUNDLE --out DIR``: ONNX graphs + manifest.json + integer hyper synthesis, and the
index from which ``hf-train rebundle DIR`` rebuilds BUNDLE (so the bundle itself need not be kept)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

if TYPE_CHECKING:
    from .quantize import Int8Request

app = typer.Typer(add_completion=False, help=__doc__)


def export_bundle(ckpt: Path, out: Path, simplify: bool = True, parity: bool = True,
                  real_images: list[np.ndarray] | None = None, timing: bool = True,
                  int8: Int8Request | None = None) -> dict:
    """Export into a temporary folder next to ``out``, then swap it in (never a half-written model).
    ``int8`` adds int8 variants of the decode-side graphs after the fp32 parity checks (export/quantize.py)."""
    from ..models import checkpoint
    from . import bundle_index, convert, grids, manifest
    from .graphs import graph_specs, real_inputs
    from .parity import end_to_end, graph_parity

    payload = checkpoint.load(ckpt)
    c = grids.components(payload, ckpt)  # weights on the runtime's int8 and integer grids (grids.py)
    specs = graph_specs(c)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        graphs = {s.name: convert.to_onnx(s, tmp / f"{s.name}.onnx", simplify) for s in specs}
        man = manifest.build(c, graphs, tmp)
        manifest.write(man, tmp)
        bundle_index.write(payload, tmp, {name: g["file"] for name, g in graphs.items()})
        if parity:
            real = real_inputs(c, real_images) if real_images else {}
            man["parity"] = {"graphs": graph_parity(tmp, specs, real, timing)}
            if real_images:
                masks = ("1_4",) if c.predictor is not None else ("none",)
                man["parity"]["end_to_end"] = end_to_end(tmp, specs, real_images, masks)
            manifest.write(man, tmp)
        if int8 is not None:
            int8.apply(tmp, man)
            manifest.write(man, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return man


@app.command()
def main_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="bundle written by `hf-train bundle`"),
    out: Path = typer.Option(..., "--out", help="model directory to write"),
    simplify: bool = typer.Option(True, help="run onnxsim on every graph"),
    parity: bool = typer.Option(True, help="measure ONNX vs PyTorch parity and store it in the manifest"),
    data: Path = typer.Option(None, help="folder of real images for parity (default: ../shared/data/val)"),
    quantize: str = typer.Option("int8", help="int8: add int8 variants of the decode-side graphs in "
                                 "quantize.QUANTISABLE, kept if they cost ≤ 0.05 dB on val crops "
                                 "(export/quantize.py); none: fp32 only"),
    calibration: Path = typer.Option(None, help="training images for int8 calibration (default: ../shared/data/train)"),
) -> None:
    from ..models.data import data_root, list_images, read_rgb
    from . import quantize as quantize_mod

    if not ckpt.is_file():
        typer.echo(f"error: checkpoint not found: {ckpt}", err=True)
        raise typer.Exit(1)
    folder = data or data_root() / "val"
    images = [read_rgb(p) for p in list_images(folder)[:4]] if parity and folder.is_dir() else None
    try:
        int8 = quantize_mod.request(quantize, calibration or data_root() / "train", folder)
        man = export_bundle(ckpt, out, simplify, parity, images, int8=int8)
    except (ValueError, OSError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"model {man['model_id'][:8]} ({man['name']}) → {out}")
    for name, g in man["graphs"].items():
        p = man.get("parity", {}).get("graphs", {}).get(name, {})
        errs = {case: v for case, v in p.items() if case in ("random", "real")}
        timing = f"  ort {p['ort_s'] * 1e3:.1f} ms  torch {p['torch_s'] * 1e3:.1f} ms" if "ort_s" in p else ""
        typer.echo(f"  {name:17s} {g['bytes'] / 1e6:6.2f} MB  {errs}{timing}")
    if "end_to_end" in man.get("parity", {}):
        typer.echo(f"  end to end: {man['parity']['end_to_end']}")
    if man.get("parity", {}).get("int8"):
        typer.echo(quantize_mod.summary(man["parity"]["int8"]))


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
