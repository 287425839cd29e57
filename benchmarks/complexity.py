"""Does the complexity score pick the right tiles? (issue 6)

    python -m benchmarks.complexity [--model DIR] [--folder DIR ...] [--limit N]

Default folders: ``val`` (where a change to the mode is judged) and ``kodak`` (reported).

For every 256² tile of every image: its complexity score, and its PSNR when the whole image is coded
with the uniform schedules 1_2, 1_4 and 1_9. Prints the loss from sending fewer indices by score
band, the rank correlation between score and that loss, and compares the schedules ``auto`` picks
with a random assignment of the same schedules in the same proportions (the same rate): if the score
is informative, auto loses less PSNR than chance. The oracle assigns the same counts knowing each
tile's loss: the most any score could achieve."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.kodak import load_images
from hybridflow.models.data import data_root
from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.tiling import TileGrid

SCHEDULES = ("1_2", "1_4", "1_9")


def tile_errors(original: np.ndarray, rec: np.ndarray) -> tuple[list[float], list[float]]:
    """Per tile: MSE, and the reconstruction's fine detail ÷ the original's (the sharpness ratio)."""
    grid = TileGrid(*original.shape[:2])
    regions = [grid.valid_region(t) for t in range(grid.count)]
    mse = [float(np.mean((original[r].astype(np.float64) - rec[r]) ** 2)) for r in regions]
    return mse, [metrics.sharpness_ratio(rec[r], original[r]) for r in regions]


def to_psnr(mse: np.ndarray) -> np.ndarray:
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(codec: Codec, images: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per tile: score, auto's schedule, MSE under each uniform schedule; per schedule: total bits."""
    cm = codec.model.complexity
    cols: dict[str, list] = {"score": [], "auto": [], **{s: [] for s in SCHEDULES},
                             **{f"{s}_detail": [] for s in SCHEDULES}}
    bits = dict.fromkeys((*SCHEDULES, "auto"), 0)
    pixels = 0
    for _, rgb in images:
        grid = TileGrid(*rgb.shape[:2])
        for t in range(grid.count):
            score = cm.score(rgb[grid.valid_region(t)])
            cols["score"].append(score)
            cols["auto"].append(cm.pick(score))
        for s in (*SCHEDULES, "auto"):
            data = codec.compress(rgb, mask=s)
            bits[s] += 8 * len(data)
            if s != "auto":
                mse, detail = tile_errors(rgb, codec.decompress(data))
                cols[s] += mse
                cols[f"{s}_detail"] += detail
        pixels += rgb.shape[0] * rgb.shape[1]
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["bpp"] = np.array([bits[s] / pixels for s in (*SCHEDULES, "auto")])
    return out


def report(m: dict[str, np.ndarray], rng: np.random.Generator) -> str:
    score, auto = m["score"], m["auto"]
    mse = np.stack([m[s] for s in SCHEDULES], 1)  # (tiles, 3)
    psnr = to_psnr(mse)
    loss9 = psnr[:, 1] - psnr[:, 2]  # dB lost by a tile going from 1_4 to 1_9
    gain2 = psnr[:, 0] - psnr[:, 1]  # dB won going from 1_4 to 1_2
    n = len(score)
    lines = [f"{n} tiles; score 5th/50th/95th percentile {np.percentile(score, 5):.2f} / "
             f"{np.median(score):.2f} / {np.percentile(score, 95):.2f}", "",
             "| score band | tiles | PSNR 1_4 | loss 1_4→1_9 (dB) | gain 1_4→1_2 (dB) | detail 1_2 / 1_4 / 1_9 |",
             "|---|---|---|---|---|---|"]
    detail = np.stack([m[f"{s}_detail"] for s in SCHEDULES], 1)
    detail_loss9 = detail[:, 1] - detail[:, 2]
    edges = np.percentile(score, [0, 25, 50, 75, 100])
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (score >= lo) & (score <= hi)
        lines.append(f"| {lo:.2f}–{hi:.2f} | {sel.sum()} | {psnr[sel, 1].mean():.2f} | "
                     f"{loss9[sel].mean():+.2f} | {gain2[sel].mean():+.2f} | "
                     f"{' / '.join(f'{v:.2f}' for v in np.median(detail[sel], 0))} |")
    lines += ["", f"Spearman(score, loss 1_4→1_9) = {spearman(score, loss9):+.2f}; "
                  f"Spearman(score, gain 1_4→1_2) = {spearman(score, gain2):+.2f} "
                  "(positive: busy tiles lose more / gain more, as the mode assumes); "
                  f"Spearman(score, detail lost 1_4→1_9) = {spearman(score, detail_loss9):+.2f}. "
                  "Detail: median per-tile sharpness ratio (reconstruction ÷ original).", ""]

    counts = {s: int((auto == s).sum()) for s in SCHEDULES}
    picks = np.array([SCHEDULES.index(s) for s in auto])
    chosen = mse[np.arange(n), picks]
    random_mse = np.mean([mse[np.arange(n), rng.permutation(picks)].mean() for _ in range(200)])
    # oracle with the same counts: the tiles that lose least go to 1_9, those that gain most to 1_2
    oracle = mse[:, 1].copy()
    order9 = np.argsort(loss9)[: counts["1_9"]]
    oracle[order9] = mse[order9, 2]
    rest = np.setdiff1d(np.arange(n), order9)
    order2 = rest[np.argsort(-gain2[rest])][: counts["1_2"]]
    oracle[order2] = mse[order2, 0]
    bpp = dict(zip((*SCHEDULES, "auto"), m["bpp"]))
    lines += [f"auto picks 1_9 / 1_4 / 1_2 for {counts['1_9']} / {counts['1_4']} / {counts['1_2']} tiles; "
              f"bpp: auto {bpp['auto']:.4f}, uniform 1_4 {bpp['1_4']:.4f} "
              f"({100 * (1 - bpp['auto'] / bpp['1_4']):+.1f} % saved), 1_9 {bpp['1_9']:.4f}, 1_2 {bpp['1_2']:.4f}",
              "",
              "| same schedule counts, assigned by | PSNR of the mean tile MSE | vs uniform 1_4 |", "|---|---|---|"]
    base = to_psnr(mse[:, 1].mean())
    for label, v in (("the complexity score (auto)", chosen.mean()), ("chance (200 permutations)", random_mse),
                     ("oracle (knows each tile's loss)", oracle.mean())):
        lines.append(f"| {label} | {to_psnr(v):.2f} | {to_psnr(v) - base:+.3f} dB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--folder", type=Path, nargs="+", default=[data_root() / "val", data_root() / "kodak"])
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    codec = Codec.load(args.model, provider="cpu")
    cm = codec.model.complexity
    how = (f"low threshold calibrated so that {100 * cm.sparse_share:.0f} % of training tiles go to 1_9"
           if cm.sparse_share is not None else "the method's literal thresholds")
    print(f"model {codec.model.name} ({codec.model.manifest['model_id'][:8]}); auto thresholds "
          f"{cm.low_threshold:.3f} / {cm.high_threshold:.3f} ({how})")
    for folder in args.folder:
        images = load_images(folder, args.limit)
        print(f"\n### {folder.name}: {len(images)} images\n")
        print(report(measure(codec, images), np.random.default_rng(0)))


if __name__ == "__main__":
    main()
