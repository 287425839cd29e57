"""Side-by-side crops at native resolution: what the streams and the classic codecs look like at our rates.

    python -m benchmarks.crops [--model DIR] [--images kodim04,kodim15,kodim23] [--out benchmarks/out]

Averages hide the point of a < 0.05 bpp codec (texture instead of blur), so this shows pixels. For each
image the same crop (the most detailed one: highest luma-Laplacian energy on a grid of candidates) is cut
from every reconstruction and shown 1:1; titles carry bpp and PSNR of the *whole* image.

- ``crops_streams.jpg``: original / continuous-only / VQ-only / hybrid (the two single-stream ablations
  against the combined stream; masks as in the RD benchmark's configurations).
- ``crops_codecs.jpg``: original / HybridFlow (hybrid, mask auto) / AVIF / HEIC / WebP / JPEG, each classic
  codec at the quality whose bpp is closest to HybridFlow's on that image. Every integer quality within
  the range ``benchmarks/baselines.py`` uses is tried, so the match is as close as the codec allows; where
  it still cannot get within 1.5× of HybridFlow's rate the title says so."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.baselines import Baseline, available
from benchmarks.kodak import load_images
from hybridflow.runtime import Codec, metrics

DEFAULT_IMAGES = "kodim04,kodim15,kodim23"
CODECS = ("AVIF", "HEIC (x265)", "WebP", "JPEG")  # columns of crops_codecs.jpg, in this order
MAX_RATIO = 1.5  # a classic codec further than this from HybridFlow's bpp is flagged in its title
DPI = 100
PAD, TITLE = 8, 40  # pixels around panels / above each panel for its title


@dataclass
class Coded:
    """One reconstruction and its whole-image figures."""

    label: str
    setting: str
    rgb: np.ndarray
    bpp: float
    psnr: float
    sharpness: float
    note: str = ""

    def title(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.label}\n{self.bpp:.3f} bpp{note}\n{self.psnr:.2f} dB"


def measure(label: str, setting: str, original: np.ndarray, n_bytes: int, rec: np.ndarray) -> Coded:
    return Coded(label, setting, rec, 8 * n_bytes / (original.shape[0] * original.shape[1]),
                 metrics.psnr(original, rec), metrics.sharpness_ratio(rec, original))


def detailed_crop(rgb: np.ndarray, size: int) -> tuple[int, int]:
    """(y, x) of the size×size window with the most luma-Laplacian energy, on a grid of stride size/4."""
    energy = cv2.Laplacian(metrics.luma(rgb), cv2.CV_64F) ** 2
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(size // 4, 1)
    ys = np.arange(0, rgb.shape[0] - size + 1, stride)
    xs = np.arange(0, rgb.shape[1] - size + 1, stride)
    y0, x0 = ys[:, None], xs[None, :]
    sums = integral[y0 + size, x0 + size] - integral[y0, x0 + size] - integral[y0 + size, x0] + integral[y0, x0]
    iy, ix = np.unravel_index(np.argmax(sums), sums.shape)
    return int(ys[iy]), int(xs[ix])


def stream_configs(codec: Codec) -> list[tuple[str, str, str]]:
    """(label, mask, stream) of the three streams; fixed masks need the token predictor."""
    masked = "1_4" if codec.model.has("predictor") else "none"
    return [("continuous-only", "none", "continuous"), (f"VQ-only ({masked})", masked, "vq"),
            (f"hybrid ({masked})", masked, "hybrid")]


def run_hybridflow(codec: Codec, rgb: np.ndarray, label: str, mask: str, stream: str) -> Coded:
    data = codec.compress(rgb, mask=mask, stream=stream)
    return measure(label, mask, rgb, len(data), codec.decompress(data))


def candidate_settings(b: Baseline) -> list[float]:
    """The baseline's settings plus every integer between its lowest and highest."""
    lo, hi = min(b.settings), max(b.settings)
    return sorted(set(b.settings) | set(range(math.ceil(lo), math.floor(hi) + 1)))


def run_baseline(b: Baseline, rgb: np.ndarray, target_bpp: float) -> Coded:
    """The setting whose bpp is closest (in ratio) to ``target_bpp``, flagged when still > 1.5× off."""
    pixels = rgb.shape[0] * rgb.shape[1]
    encoded = [(q, b.encode(rgb, q)) for q in candidate_settings(b)]
    q, data = min(encoded, key=lambda e: abs(math.log(8 * len(e[1]) / pixels / target_bpp)))
    coded = measure(b.name, f"{q:g}", rgb, len(data), b.decode(data))
    if coded.bpp > MAX_RATIO * target_bpp:
        coded.note = "lowest reachable"
    elif coded.bpp < target_bpp / MAX_RATIO:
        coded.note = "highest reachable"
    return coded


def select_images(folder: Path | None, names: list[str]) -> list[tuple[str, np.ndarray]]:
    by_stem = {Path(name).stem: (name, rgb) for name, rgb in load_images(folder)}
    unknown = [n for n in names if n not in by_stem]
    if unknown:
        raise SystemExit(f"not found: {', '.join(unknown)} (have {', '.join(sorted(by_stem))})")
    return [by_stem[n] for n in names]


def crop(rgb: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    return rgb[y : y + size, x : x + size]


def figure(rows: list[list[tuple[np.ndarray, str]]], size: int, path: Path) -> None:
    """A grid of size×size panels placed at exact pixel positions, so the PNG shows them 1:1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    w, h = cols * (size + PAD) + PAD, len(rows) * (size + TITLE) + PAD
    fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    for r, row in enumerate(rows):
        for c, (img, title) in enumerate(row):
            left, bottom = PAD + c * (size + PAD), h - (r + 1) * (size + TITLE)
            ax = fig.add_axes((left / w, bottom / h, size / w, size / h))
            ax.imshow(img, interpolation="none")
            ax.set_title(title, fontsize=7.5, pad=2, linespacing=1.1)
            ax.axis("off")
    fig.savefig(path, dpi=DPI, pil_kwargs={"quality": 80, "subsampling": 0})  # JPEG 4:4:4, q80: tree ≤ 32 MiB
    plt.close(fig)


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*out, *("| " + " | ".join(cells) + " |" for cells in lines)])


def cells(image: str, c: Coded) -> list[str]:
    return [image, c.label, c.setting, f"{c.bpp:.4f}", f"{c.psnr:.2f}", f"{c.sharpness:.2f}", c.note]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="comma-separated file stems")
    ap.add_argument("--folder", type=Path, default=None, help="image folder (default: Kodak under $HF_DATA)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--size", type=int, default=192, help="crop side in pixels")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    codec = Codec.load(args.model, provider="cpu")
    baselines = {b.name: b for b in available()}
    missing = [name for name in CODECS if name not in baselines]
    if missing:
        print(f"not available here, left out: {', '.join(missing)}")
    auto = "auto" if codec.model.has("predictor") else "none"

    stream_rows, codec_rows, stream_lines, codec_lines = [], [], [], []
    for name, rgb in select_images(args.folder, [s.strip() for s in args.images.split(",") if s.strip()]):
        stem = Path(name).stem
        y, x = detailed_crop(rgb, args.size)
        original = (crop(rgb, y, x, args.size), f"{stem} original\ncrop at x={x}, y={y}\n")
        streams = [run_hybridflow(codec, rgb, *cfg) for cfg in stream_configs(codec)]
        ours = run_hybridflow(codec, rgb, f"HybridFlow ({auto})", auto, "hybrid")
        classic = [run_baseline(baselines[n], rgb, ours.bpp) for n in CODECS if n in baselines]
        stream_rows.append([original, *((crop(c.rgb, y, x, args.size), c.title()) for c in streams)])
        codec_rows.append([original, *((crop(c.rgb, y, x, args.size), c.title()) for c in (ours, *classic))])
        stream_lines += [cells(stem, c) for c in streams]
        codec_lines += [cells(stem, c) for c in (ours, *classic)]
        print(f"{stem}: done", flush=True)

    header = ["image", "codec / stream", "setting", "bpp", "PSNR (dB)", "sharpness", "note"]
    print("\nStreams (whole-image figures):\n\n" + table(header, stream_lines))
    print("\nClassic codecs at HybridFlow's rate:\n\n" + table(header, codec_lines) + "\n")
    for file, rows in (("crops_streams.jpg", stream_rows), ("crops_codecs.jpg", codec_rows)):
        figure(rows, args.size, args.out / file)
        print(f"wrote {args.out / file}")


if __name__ == "__main__":
    main()
