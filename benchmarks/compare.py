"""Per-image comparison of two ``benchmarks.rd`` runs: how a candidate model differs from a baseline.

    python -m benchmarks.compare BASELINE/rd_points.csv CANDIDATE/rd_points.csv

Why: every release decision is made on ``val`` through the runtime, and the means of two runs hide
whether a change helps most images a little or a few images a lot. For each (codec, setting) row
both runs have, over the images both have: the mean of each metric in either run, the mean change
(candidate − baseline) and on how many images the candidate is better (higher PSNR and MS-SSIM,
lower bpp and LPIPS-Alex). A setting whose bytes differ between the runs (any image's bpp) is flagged:
then the pictures are not compared at the same rate."""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# metric → +1 where higher is better, −1 where lower is
METRICS = {"bpp": -1, "psnr": 1, "ms_ssim": 1, "lpips": -1}

Rows = dict[tuple[str, str], dict[str, dict[str, str]]]  # (codec, setting) → image → row


@dataclass(frozen=True)
class Change:
    metric: str
    before: float  # mean over the shared images, baseline
    after: float  # the same, candidate
    better: int  # images on which the candidate is better
    images: int

    @property
    def delta(self) -> float:
        return self.after - self.before


def load(path: Path) -> Rows:
    rows: Rows = defaultdict(dict)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows[(r["codec"], r["setting"])][r["image"]] = r
    return rows


def compare(baseline: Rows, candidate: Rows) -> dict[tuple[str, str], list[Change]]:
    """Per shared (codec, setting): one ``Change`` per metric both runs measured, over shared images."""
    out = {}
    for key in sorted(set(baseline) & set(candidate)):
        images = sorted(set(baseline[key]) & set(candidate[key]))
        if not images:
            continue
        changes = []
        for metric, sign in METRICS.items():
            pairs = [(baseline[key][i].get(metric, ""), candidate[key][i].get(metric, "")) for i in images]
            if any(a == "" or b == "" for a, b in pairs):
                continue
            a, b = ([float(p[k]) for p in pairs] for k in (0, 1))
            better = sum(1 for x, y in zip(a, b) if (y - x) * sign > 0)
            changes.append(Change(metric, sum(a) / len(a), sum(b) / len(b), better, len(images)))
        out[key] = changes
    return out


def report(changes: dict[tuple[str, str], list[Change]]) -> str:
    lines = ["| codec | setting | images | metric | baseline | candidate | change | candidate better |",
             "|---|---|---|---|---|---|---|---|"]
    for (codec, setting), rows in changes.items():
        same_bytes = all(c.better == 0 and c.delta == 0 for c in rows if c.metric == "bpp")
        for c in rows:
            note = "" if c.metric != "bpp" or same_bytes else " (bytes differ)"
            lines.append(f"| {codec} | {setting} | {c.images} | {c.metric} | {c.before:.4f} | {c.after:.4f} | "
                         f"{c.delta:+.4f}{note} | {c.better}/{c.images} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, help="rd_points.csv of the baseline run")
    ap.add_argument("candidate", type=Path, help="rd_points.csv of the candidate run")
    args = ap.parse_args()
    print(report(compare(load(args.baseline), load(args.candidate))))


if __name__ == "__main__":
    main()
