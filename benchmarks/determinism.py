"""Entropy-path determinism on every ``val`` image: streams written under one execution configuration
must decode under another (any disagreement in the entropy parameters makes decoding fail or return
garbage), and decoded pixels may differ only by float noise in the synthesis graphs.

    python -m benchmarks.determinism [--model DIR] [--ckpt BUNDLE] [--folder DIR] [--limit N] [--rate K]

Configurations (CONFIGS): onnxruntime at 2 threads with full graph optimisation (the default, int8
window decoders), at 1 thread with no optimisation, at 2 threads with the fp32 decoders, and the
PyTorch modules the model was exported from (fp32; needs the model's bundle: --ckpt, or the one
derived from the model directory). Every configuration runs in processes of its own, so the two
sides of a pair share nothing but the stream files: first each one encodes every image and decodes
its own streams, then each decodes the streams of its partners (PAIRS). Reported per pair, all
counted: streams decoded or refused, encoders that wrote the same bytes, and the largest pixel
difference between the decoder's output and the encoding configuration's own decode of that stream."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hybridflow.runtime.model import DEFAULT_MODEL_DIR

CONFIGS = {  # name: (threads, graph optimisation, precision) for onnxruntime; "torch": the PyTorch modules
    "ort-2t-opt": (2, True, "auto"),
    "ort-1t-noopt": (1, False, "auto"),
    "ort-2t-fp32": (2, True, "fp32"),
    "torch": None,
}
PAIRS = [("ort-2t-opt", "ort-1t-noopt"), ("ort-1t-noopt", "ort-2t-opt"), ("torch", "ort-2t-fp32"),
         ("ort-2t-fp32", "torch"), ("torch", "ort-2t-opt")]  # (encoder, decoder)


def load_codec(config: str, model: Path, ckpt: Path | None):  # noqa: ANN201 (a Codec)
    from hybridflow.runtime import Codec

    if CONFIGS[config] is None:
        from hybridflow.export.graphs import graph_specs
        from hybridflow.export.parity import TorchModel
        from hybridflow.models.train.release import open_bundle

        return Codec(TorchModel.from_specs(model, graph_specs(open_bundle(ckpt or model))))
    threads, optimise, precision = CONFIGS[config]
    codec = Codec.load(model, provider="cpu", threads=threads, optimise=optimise)
    codec.model.precision = precision
    return codec


def child(config: str, phase: str, args: argparse.Namespace) -> None:
    """One configuration, one phase, in its own process. Streams go to WORK/streams/<encoder>/, decodes
    to WORK/decoded/<decoder>/<encoder>/ (.npy), refusals to WORK/refused/<decoder>/<encoder>.json."""
    from benchmarks.kodak import load_images
    from hybridflow.runtime.bitstream import BitstreamError

    codec, work = load_codec(config, args.model, args.ckpt), args.work
    if phase == "encode":
        out = work / "streams" / config
        out.mkdir(parents=True)
        for name, rgb in load_images(args.folder, args.limit):
            (out / f"{name}.hfc").write_bytes(codec.compress(rgb, mask=args.mask, rate=args.rate))
    encoders = [config] if phase == "encode" else [e for e, d in PAIRS if d == config]
    for enc in encoders:
        out, refused = work / "decoded" / config / enc, {}
        out.mkdir(parents=True)
        for path in sorted((work / "streams" / enc).glob("*.hfc")):
            try:
                np.save(out / f"{path.stem}.npy", codec.decompress(path.read_bytes()))
            except BitstreamError as e:
                refused[path.stem] = str(e)
        (work / "refused" / config).mkdir(parents=True, exist_ok=True)
        (work / "refused" / config / f"{enc}.json").write_text(json.dumps(refused))


def run_child(config: str, phase: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "benchmarks.determinism", "--child", config, phase, "--work", str(args.work),
           "--model", str(args.model), "--mask", args.mask]
    cmd += ["--ckpt", str(args.ckpt)] if args.ckpt else []
    cmd += ["--folder", str(args.folder)] if args.folder else []
    cmd += ["--limit", str(args.limit)] if args.limit is not None else []
    cmd += ["--rate", str(args.rate)] if args.rate is not None else []
    subprocess.run(cmd, check=True, cwd=Path(__file__).parents[1])


def report(work: Path, configs: list[str], images: int) -> list[str]:
    """The comparison, from the files the child processes left (nothing here is assumed)."""
    lines, ref = [], "ort-2t-opt"
    streams = {c: {p.stem: p.read_bytes() for p in (work / "streams" / c).glob("*.hfc")} for c in configs}
    for c in configs:
        same = sum(streams[c].get(n) == data for n, data in streams[ref].items())
        lines.append(f"encoder {c}: {len(streams[c])}/{images} images encoded; bytes identical to {ref}'s for "
                     f"{same}/{len(streams[ref])}")
    for enc, dec in PAIRS:
        if enc not in configs or dec not in configs:
            continue
        refused = json.loads((work / "refused" / dec / f"{enc}.json").read_text())
        decoded, max_diff, own_missing = 0, 0, 0
        for path in sorted((work / "decoded" / dec / enc).glob("*.npy")):
            decoded += 1
            own = work / "decoded" / enc / enc / path.name
            if not own.exists():  # the encoder could not decode its own stream: counted, not compared
                own_missing += 1
                continue
            max_diff = max(max_diff, int(np.abs(np.load(own).astype(int) - np.load(path).astype(int)).max()))
        line = (f"{enc} → {dec}: {decoded}/{len(streams[enc])} streams decoded, {len(refused)} refused; "
                f"max pixel difference from {enc}'s own decode {max_diff}")
        lines.append(line + (f" ({own_missing} not compared: {enc} refused its own)" if own_missing else ""))
        lines += [f"  refused {name}: {why}" for name, why in sorted(refused.items())]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--ckpt", type=Path, default=None, help="bundle (default: derived from --model)")
    ap.add_argument("--folder", type=Path, default=None, help="images (default: the val set)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--mask", default="auto")
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=None, help="rate point of the continuous stream (default: the base)")
    args = ap.parse_args()
    if args.folder is None:
        from hybridflow.models.data import data_root

        args.folder = data_root() / "val"
    if args.child:
        child(*args.child, args)
        return
    from benchmarks.kodak import load_images
    from hybridflow.models.data import list_images
    from hybridflow.runtime import Codec

    configs = [c for c in CONFIGS if CONFIGS[c] is not None or args.ckpt or (args.model / "bundle_index.json").exists()]
    model = Codec.load(args.model, provider="cpu").model
    images = len(load_images(args.folder, args.limit))
    print(f"{images} of the {len(list_images(args.folder))} images in {args.folder}, mask {args.mask}, "
          f"rate point {model.base_rate if args.rate is None else args.rate}, "
          f"model {model.name} (id {model.model_id.hex()}); configurations: {', '.join(configs)}")
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(tmp)
        for phase in ("encode", "decode"):
            for config in configs:
                run_child(config, phase, args)
        print("\n".join(report(args.work, configs, images)))


if __name__ == "__main__":
    main()
