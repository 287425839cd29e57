"""Entropy-path determinism on every ``val`` image: streams written under one execution configuration
must decode under another (any disagreement in the entropy parameters makes decoding fail or return
garbage), and decoded pixels may differ only by float noise in the synthesis graphs.

    python -m benchmarks.determinism [--model DIR] [--ckpt BUNDLE] [--limit N]

Pairs checked per image: ORT 2 threads + full graph optimisation → ORT 1 thread + no optimisation
(both directions), and the PyTorch reference encoder → ORT decoder (the model's bundle: --ckpt, or the one
derived from the model directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.kodak import load_images
from hybridflow.models.data import data_root, list_images
from hybridflow.runtime import Codec
from hybridflow.runtime.bitstream import BitstreamError
from hybridflow.runtime.model import DEFAULT_MODEL_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--ckpt", type=Path, default=None, help="bundle (default: derived from --model)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--mask", default="auto")
    args = ap.parse_args()
    fast = Codec.load(args.model, provider="cpu", threads=2, optimise=True)
    plain = Codec.load(args.model, provider="cpu", threads=1, optimise=False)
    pairs = [("ort-2t-opt → ort-1t-noopt", fast, plain), ("ort-1t-noopt → ort-2t-opt", plain, fast)]
    if args.ckpt is not None or (args.model / "bundle_index.json").exists():
        from hybridflow.export.graphs import graph_specs
        from hybridflow.export.parity import TorchModel
        from hybridflow.models.train.release import open_bundle

        torch_codec = Codec(TorchModel.from_specs(args.model, graph_specs(open_bundle(args.ckpt or args.model))))
        pairs.append(("torch → ort-2t-opt", torch_codec, fast))
    folder = data_root() / "val"
    images = load_images(folder, args.limit)
    print(f"{len(images)} of the {len(list_images(folder))} val images, mask {args.mask}, model {fast.model.name} "
          f"(id {fast.model.model_id.hex()})")
    for label, enc, dec in pairs:
        decoded, same_bytes, max_diff = 0, 0, 0
        for name, rgb in images:
            data = enc.compress(rgb, mask=args.mask)
            same_bytes += data == dec.compress(rgb, mask=args.mask)  # the two configurations' encoders
            try:
                got = dec.decompress(data)
            except BitstreamError as e:
                print(f"  {name}: {label} refused: {e}")
                continue
            decoded += 1
            max_diff = max(max_diff, int(np.abs(enc.decompress(data).astype(int) - got.astype(int)).max()))
        print(f"{label}: {decoded}/{len(images)} decoded; the two encoders wrote identical bytes for "
              f"{same_bytes}/{len(images)}; max pixel difference between the two decoders {max_diff}")


if __name__ == "__main__":
    main()
