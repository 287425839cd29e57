"""Runtime figures for the closing notes: coder and header overhead, padding cost, seams, speed, RSS.

    python -m benchmarks.runtime_stats [--model DIR] [--skip-large]

- coder overhead: payload bits vs the ideal −log2 p of the very same symbols under the same models
- header overhead: container bytes that are not payload, for a 512×512 image
- padding: bits of continuous symbols whose 64×64 footprint lies wholly in the padding (1000×700);
  the discrete stream never sends indices there
- seams: mean |Δluma| across tile borders vs inside tiles, reconstruction ÷ original
- seconds per Kodak image (encode / decode) and peak RSS of separate encode and decode processes
  for big images"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.kodak import load_images
from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.codec import Symbols
from hybridflow.runtime.tiling import TILE

_erf = np.frompyfunc(math.erf, 1, 1)


def ideal_bits(codec: Codec, sym: Symbols) -> float:
    t = codec.model.tables
    bits = 0.0
    if sym.indices is not None and sym.indices.size:
        bits -= np.log2(t.index_prior[sym.indices] / t.index_prior.sum()).sum()
    if sym.z_hat is not None:
        c = np.arange(sym.z_hat.shape[0])[:, None, None]
        bits -= np.log2(t.z_pmf[c, sym.z_hat.astype(int) + t.z_radius]).sum()
        bits += y_bits(codec, sym).sum()
    return float(bits)


def y_bits(codec: Codec, sym: Symbols) -> np.ndarray:
    t = codec.model.tables
    s = t.stds(sym.y_scale).reshape(sym.y_scale.shape) * math.sqrt(2)
    q = sym.y_residual
    p = 0.5 * (_erf((q + 0.5) / s).astype(float) - _erf((q - 0.5) / s).astype(float))
    return -np.log2(np.maximum(p, 1e-12))


def mosaic(images: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """A large, photo-like test image: Kodak images laid side by side (mirrored to hide joins)."""
    images = [im for im in images if im.shape[:2] == (512, 768)]  # landscape Kodak only
    out = np.empty((h, w, 3), np.uint8)
    k = 0
    for y in range(0, h, 512):
        for x in range(0, w, 768):
            img = images[k % len(images)][:512, :768]
            img = img[:, ::-1] if (x // 768) % 2 else img
            out[y : y + 512, x : x + 768] = img[: min(512, h - y), : min(768, w - x)]
            k += 1
    return out


def seam_ratio(orig: np.ndarray, rec: np.ndarray, tile: int = TILE) -> tuple[float, float]:
    """Mean |Δluma| between neighbouring columns/rows at tile borders and inside tiles, rec ÷ orig."""
    def grads(img: np.ndarray) -> tuple[float, float]:
        lum = metrics.luma(img)
        dx, dy = np.abs(np.diff(lum, axis=1)), np.abs(np.diff(lum, axis=0))
        bx = np.arange(dx.shape[1]) % tile == tile - 1
        by = np.arange(dy.shape[0]) % tile == tile - 1
        border = np.concatenate([dx[:, bx].ravel(), dy[by].ravel()]).mean()
        inside = np.concatenate([dx[:, ~bx].ravel(), dy[~by].ravel()]).mean()
        return border, inside

    (ob, oi), (rb, ri) = grads(orig), grads(rec)
    return rb / ob, ri / oi


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space. On Linux ``ru_maxrss`` is carried over from the
    parent across fork + exec (a child of a 400 MB process reports ≥ 400 MB), so the per-address-space
    high-water mark ``VmHWM`` is read instead; ``ru_maxrss`` only where /proc is missing."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def large_child(model: str | None, h: int, w: int, stream_file: str, decode: bool) -> None:
    """In a fresh process: encode an h×w mosaic to ``stream_file``, or decode it and measure seams.
    Prints one JSON line; peak RSS is this process's own (encode and decode never share one)."""
    codec = Codec.load(model, provider="cpu")
    test_image = lambda: mosaic([im for _, im in load_images(limit=6)], h, w)  # noqa: E731
    if not decode:
        img = test_image()
        t = time.perf_counter()
        data = codec.compress(img, mask="auto")
        Path(stream_file).write_bytes(data)
        print(json.dumps({"bytes": len(data), "bpp": 8 * len(data) / h / w, "encode_s": time.perf_counter() - t,
                          "peak_rss_encode_mb": peak_rss_mb(), "image_mb": img.nbytes / 2**20}))
        return
    t = time.perf_counter()
    rec = codec.decompress(Path(stream_file).read_bytes())
    seconds, peak = time.perf_counter() - t, peak_rss_mb()  # before the seam analysis allocates its own
    border, inside = seam_ratio(test_image(), rec)
    print(json.dumps({"decode_s": seconds, "peak_rss_decode_mb": peak,
                      "seam_grad_ratio_border": float(border), "seam_grad_ratio_inside": float(inside)}))


def large(model: str | None, h: int, w: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for decode in (False, True):
            call = f"large_child({model!r}, {h}, {w}, {str(Path(tmp) / 'x.hfc')!r}, {decode})"
            p = subprocess.run([sys.executable, "-c", f"from benchmarks.runtime_stats import large_child; {call}"],
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr)
            out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--large", default="6000x4000,8000x6000", help="sizes WxH for the RSS/seam runs")
    args = ap.parse_args()
    codec = Codec.load(args.model, provider="cpu")
    images = load_images()
    report: dict[str, object] = {"model": codec.model.manifest["model_id"][:8]}

    ideal = actual = 0.0
    enc_s, dec_s, bpps = [], [], []
    mask = "auto" if codec.model.has("predictor") else "none"
    for _, rgb in images:
        t0 = time.perf_counter()
        sym = codec.analyse(rgb, mask=mask)
        data = codec.entropy_code(sym)
        t1 = time.perf_counter()
        codec.decompress(data)
        enc_s.append(t1 - t0)
        dec_s.append(time.perf_counter() - t1)
        bpps.append(8 * len(data) / rgb.shape[0] / rgb.shape[1])
        _, words, header_bytes = codec.read_header(data)
        ideal += ideal_bits(codec, sym)
        actual += 8 * (len(data) - header_bytes)
    report["kodak_mask"] = mask
    report["kodak_mean_bpp"] = float(np.mean(bpps))
    report["coder_overhead_pct"] = 100 * (actual / ideal - 1)
    report["kodak_encode_s"] = float(np.mean(enc_s))
    report["kodak_decode_s"] = float(np.mean(dec_s))

    crop = cv2.resize(images[0][1], (512, 512), interpolation=cv2.INTER_AREA)
    data = codec.compress(crop, mask=mask)
    _, _, header_bytes = codec.read_header(data)
    report["header_512"] = {"file_bytes": len(data), "header_and_crc_bytes": header_bytes,
                            "bpp": 8 * len(data) / 512**2, "pct": 100 * header_bytes / len(data)}

    img = mosaic([im for _, im in images[:4]], 700, 1000)
    sym = codec.analyse(img, mask=mask)
    grid, stride = codec.geometry.tiles(700, 1000), codec.geometry.latent_stride
    bits = y_bits(codec, sym)
    ys = np.arange(bits.shape[1]) * stride >= grid.height
    xs = np.arange(bits.shape[2]) * stride >= grid.width
    pad_bits = float(bits[:, ys[:, None] | xs[None, :]].sum())
    total = 8 * len(codec.entropy_code(sym))
    report["padding_1000x700"] = {"file_bits": total, "padding_bits": pad_bits, "pct": 100 * pad_bits / total}

    if not args.skip_large:
        for size in args.large.split(","):
            w, h = (int(v) for v in size.split("x"))
            report[f"large_{size}"] = large(args.model, h, w)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
