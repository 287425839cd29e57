"""Stage-1 report: VQ-only (full index map) and continuous-only on Kodak, codebook usage on val.

    python -m benchmarks.stage1 [--model DIR] [--folder DIR]

Targets (issue 2): continuous-only ≤ 0.03 bpp; VQ-only full indices ≤ 0.045 bpp with codebook
usage ≥ 80 % and sharpness ratio ≥ 0.6."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.kodak import evaluate, load_images, mean, table, whole_tiles
from hybridflow.models.data import data_root
from hybridflow.runtime import Codec, metrics


def codebook_usage(codec: Codec, folder: Path) -> tuple[float, float, int]:
    """Fraction of codes used and perplexity over every whole tile of the images in ``folder``."""
    counts = np.zeros(int(codec.model.manifest["n_codes"]), np.int64)
    for _, rgb in load_images(folder):
        x = whole_tiles(rgb, codec.geometry.tile).transpose(0, 3, 1, 2).astype(np.float32) / 255
        (idx,) = codec.model.run("vq_encoder", image=x)
        counts += np.bincount(idx.ravel(), minlength=counts.size)
    return float((counts > 0).mean()), metrics.perplexity(counts), int(counts.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--folder", type=Path, default=None, help="default: ../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    codec = Codec.load(args.model, provider="cpu")
    images = load_images(args.folder, args.limit)
    results = {
        "VQ-only, full indices (--stream vq --mask none)": mean(evaluate(codec, images, "none", "vq")),
        "continuous-only (--stream continuous)": mean(evaluate(codec, images, "none", "continuous")),
    }
    print(f"model {codec.model.name} ({codec.model.manifest['model_id'][:8]}), {len(images)} images\n")
    print(table(results))
    used, ppl, n = codebook_usage(codec, data_root() / "val")
    print(f"\ncodebook usage on val ({n} tokens): {100 * used:.1f} % of codes used, perplexity {ppl:.0f}")


if __name__ == "__main__":
    main()
