"""Does rate control keep its promises? Sizes only (real bytes), per folder or glob (issue 18's targets).

For every image: ``--target-bpp 0.03`` (never above, mean close below), no flags (the default must stay
≤ 0.05 bpp on every photo) and ``--max-bytes`` at 0.02 bpp + 7 bytes (an exact cap: never above).

    python -m benchmarks.rate_accuracy '../shared/data/kodak/*.png' [--target 0.03] [--model DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybridflow.runtime import Codec
from hybridflow.runtime.imageio import read_image
from hybridflow.runtime.ratecontrol import DEFAULT_MAX_BPP, RateError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("globs", nargs="+", help="image files or globs (quote them)")
    ap.add_argument("--target", type=float, default=0.03, help="--target-bpp to check")
    ap.add_argument("--cap-bpp", type=float, default=0.02, help="--max-bytes is set to this many bpp + 7 bytes")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    codec = Codec.load(args.model)
    files = sorted({p for g in args.globs for p in Path(g).parent.glob(Path(g).name)})
    target, default, capped, unreachable = [], [], 0, 0
    for f in files:
        rgb = read_image(f)[0]
        px = rgb.shape[0] * rgb.shape[1]
        got = float("nan")
        try:
            got = 8 * len(codec.compress(rgb, target_bpp=args.target)) / px
            target.append(got)
        except RateError as e:
            unreachable += 1
            print(f"{f.name}: --target-bpp {args.target} unreachable: {e}")
        default.append(8 * len(codec.compress(rgb)) / px)
        budget = int(args.cap_bpp * px / 8) + 7
        kept = len(codec.compress(rgb, max_bytes=budget)) <= budget
        capped += kept
        print(f"{f.name} {px / 1e6:.2f} MP: target {got:.4f} default {default[-1]:.4f} "
              f"max-bytes {budget} {'kept' if kept else 'EXCEEDED'}", flush=True)
    t = np.array(target)
    print(f"\nmodel {codec.model.name} ({codec.model.manifest['model_id'][:8]}); {len(files)} images, "
          f"from {' '.join(args.globs)}")
    print(f"--target-bpp {args.target}: {len(t)} reachable, {unreachable} not; max {t.max():.4f} mean {t.mean():.4f}; "
          f"over target: {int((t > args.target).sum())}")
    print(f"no flags: max {max(default):.4f} mean {np.mean(default):.4f} bpp; over {DEFAULT_MAX_BPP}: "
          f"{sum(d > DEFAULT_MAX_BPP for d in default)}")
    print(f"--max-bytes ({args.cap_bpp} bpp + 7 B): within budget {capped}/{len(files)}")


if __name__ == "__main__":
    main()
