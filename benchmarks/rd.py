"""Rate–distortion of HybridFlow (every schedule, both single-stream ablations) against classic codecs.

    python -m benchmarks.rd [--model DIR] [--folder DIR] [--out benchmarks/out] [--lpips DIR] [--rates all]

Writes ``rd_points.csv`` (one row per image × codec × setting), ``rd_psnr.png``, ``rd_msssim.png``,
``rd_sharpness.png``, ``rd_sharpness_half.png``
and ``rd_summary.md`` (mean points, BD-rate/BD-PSNR over the overlapping range,
each codec's lowest reachable rate). bpp always comes from real file bytes. With LPIPS-Alex weights
on disk (``--lpips DIR`` or ``$HF_LPIPS_WEIGHTS``, see ``runtime/metrics.lpips_alex``) every row, the summary
and ``rd_lpips.png`` also carry LPIPS; without them it is skipped with a one-line note.

``--rates 0,2,5`` (or ``all``) runs every HybridFlow row at those rate points of the continuous stream
(runtime/rates.py) instead of the model's base point: each row becomes a curve over the points, labelled
``HybridFlow (auto)``, ``continuous-only (none)`` …, with settings ``rate 0`` …, and the summary says
whether each ladder is monotone (bpp up, PSNR up, LPIPS-Alex down)."""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.baselines import available
from benchmarks.kodak import load_images, round_trip
from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.streams import stream_kind

HYBRID = [("HybridFlow", m, "hybrid") for m in ("none", "1_2", "1_4", "1_9", "1_16", "all", "auto")]
# the paper's ablations: VQ-only at the same schedules (no continuous stream: the predictor runs
# unguided, plain VQ decoder), continuous-only, and the hybrid stream decoded without the correction net
VQ_ONLY = "VQ-only"
NO_CORRECTION = "HybridFlow w/o correction"
NO_FUSION = "HybridFlow w/o fusion"  # the pixel decoder's picture alone (models with a fusion graph)
ABLATIONS = [(VQ_ONLY, m, "vq") for m in ("none", "1_2", "1_4", "1_9", "1_16")]
ABLATIONS += [("continuous-only", "none", "continuous")]
ABLATIONS += [(NO_CORRECTION, m, "hybrid") for m in ("1_4", "1_9")]
ABLATIONS += [(NO_FUSION, m, "hybrid") for m in ("1_4", "auto")]
MAX_BPP = 0.12
METRICS = ("bpp", "psnr", "ms_ssim", "sharpness", "sharpness_half", "encode_s", "decode_s")


def bd(r1: np.ndarray, d1: np.ndarray, r2: np.ndarray, d2: np.ndarray) -> tuple[float | None, float | None]:
    """Bjøntegaard delta of curve 2 against curve 1: (BD-rate %, BD-PSNR dB); None without overlap."""
    if len(r1) < 2 or len(r2) < 2:
        return None, None
    lr1, lr2 = np.log(r1), np.log(r2)
    deg = min(3, len(r1) - 1, len(r2) - 1)
    lo, hi = max(d1.min(), d2.min()), min(d1.max(), d2.max())
    rate = None
    if hi > lo:
        p1, p2 = np.polyfit(d1, lr1, deg), np.polyfit(d2, lr2, deg)
        i1, i2 = np.polyint(p1), np.polyint(p2)
        diff = (np.polyval(i2, hi) - np.polyval(i2, lo) - np.polyval(i1, hi) + np.polyval(i1, lo)) / (hi - lo)
        rate = float((np.exp(diff) - 1) * 100)
    lo, hi = max(lr1.min(), lr2.min()), min(lr1.max(), lr2.max())
    psnr = None
    if hi > lo:
        q1, q2 = np.polyint(np.polyfit(lr1, d1, deg)), np.polyint(np.polyfit(lr2, d2, deg))
        psnr = float((np.polyval(q2, hi) - np.polyval(q2, lo) - np.polyval(q1, hi) + np.polyval(q1, lo)) / (hi - lo))
    return rate, psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated STREAM:MASK rows to run (e.g. hybrid:auto,vq:none); "
                                               "default: every row and the classic codecs")
    ap.add_argument("--lpips", default=None, help="folder with the LPIPS-Alex weights (default: "
                                                  "$HF_LPIPS_WEIGHTS, else ../shared/weights/lpips)")
    ap.add_argument("--rates", default="", help="comma-separated rate points of the continuous stream, or 'all': "
                                                "one curve per HybridFlow row (default: the base point only)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_images(args.folder, args.limit)
    codec = Codec.load(args.model, provider="cpu")
    rates = rate_list(args.rates, codec.model.rate_points)
    plain = Codec(codec.model, correction=False)  # same graphs, hybrid streams through the plain VQ decoder
    unfused = Codec(codec.model, fusion=False)  # same graphs, the pixel decoder's picture as is
    perceptual = metrics.lpips_alex(args.lpips, say=print)
    rows: list[dict[str, object]] = []
    picked: Counter[str] = Counter()  # the schedules `auto` chose, over all tiles
    only = {tuple(item.split(":")) for item in args.only.split(",") if item}
    for label, mask, stream in HYBRID + ABLATIONS:
        if only and ((stream, mask) not in only or label == NO_CORRECTION):
            continue
        if mask not in ("none", "all") and not codec.model.has("predictor"):
            continue
        if label == NO_CORRECTION and not codec.model.has_correction:
            continue
        if label == NO_FUSION and not codec.model.has("fusion"):  # (with --only: next to its fused row)
            continue
        c = {NO_CORRECTION: plain, NO_FUSION: unfused}.get(label, codec)
        for rate in rates if stream_kind(stream).continuous else [None]:
            name_of_row, setting = (label, mask) if rate is None else (f"{label} ({mask})", f"rate {rate}")
            for name, rgb in images:
                data, rec, seconds = round_trip(c, rgb, mask, stream, rate=rate)
                if mask == "auto":
                    picked.update(codec.info(data).schedules)
                rows.append({"codec": name_of_row, "setting": setting, "image": name,
                             **metrics.quality(rgb, len(data), rec, perceptual), **seconds})
            print(f"{name_of_row} {setting}: done", flush=True)
    for b in [] if only or rates != [None] else available():
        for q in b.settings:
            for name, rgb in images:
                t0 = time.perf_counter()
                data = b.encode(rgb, q)
                t1 = time.perf_counter()
                rec = b.decode(data)
                t2 = time.perf_counter()
                q_img = metrics.quality(rgb, len(data), rec, perceptual)
                rows.append({"codec": b.name, "setting": q, "image": name, **q_img,
                             "encode_s": t1 - t0, "decode_s": t2 - t1})
        print(f"{b.name}: done", flush=True)
    with open(args.out / "rd_points.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, len(images), codec, picked)
    (args.out / "rd_summary.md").write_text(summary)
    plot(rows, args.out)
    print(summary)


def rate_list(spec: str, count: int) -> list[int | None]:
    """``--rates``: [None] (the base point, rows labelled as always) or the listed points."""
    if not spec:
        return [None]
    points = list(range(count)) if spec == "all" else [int(v) for v in spec.split(",")]
    if any(not 0 <= k < count for k in points):
        raise SystemExit(f"--rates: the model has rate points 0…{count - 1}")
    return points


def ladders(cs: dict[str, list[dict[str, float]]]) -> list[str]:
    """For each curve over rate points: is quality monotone in the points' order (bpp up, PSNR up,
    LPIPS-Alex down)?"""
    lines = []
    for name, pts in cs.items():
        if not pts or not str(pts[0]["setting"]).startswith("rate "):
            continue
        pts = sorted(pts, key=lambda p: int(str(p["setting"]).split()[1]))
        checks = {"bpp": 1, "psnr": 1, **({"lpips": -1} if "lpips" in pts[0] else {})}
        ok = {k: all(sign * (b[k] - a[k]) > 0 for a, b in zip(pts, pts[1:])) for k, sign in checks.items()}
        lines.append(f"- {name}: " + ", ".join(f"{k} {'monotone ✔' if v else 'NOT monotone ✘'}"
                                               for k, v in ok.items()))
    return ["", "Rate-point ladders (in point order):", "", *lines] if lines else []


def has_lpips(rows: list[dict[str, object]]) -> bool:
    return bool(rows) and "lpips" in rows[0]


def metric_keys(rows: list[dict[str, object]]) -> tuple[str, ...]:
    return METRICS + (("lpips",) if has_lpips(rows) else ())


def curves(rows: list[dict[str, object]]) -> dict[str, list[dict[str, float]]]:
    """Mean over images for each (codec, setting), sorted by bpp."""
    out: dict[str, list[dict[str, float]]] = {}
    keys = sorted({(str(r["codec"]), str(r["setting"])) for r in rows})
    for codec, setting in keys:
        sel = [r for r in rows if r["codec"] == codec and str(r["setting"]) == setting]
        point = {k: float(np.mean([float(r[k]) for r in sel])) for k in metric_keys(rows)}
        point["setting"] = setting  # type: ignore[assignment]
        out.setdefault(codec, []).append(point)
    for pts in out.values():
        pts.sort(key=lambda p: p["bpp"])
    return out


def summarise(rows: list[dict[str, object]], n_images: int, codec: Codec, picked: Counter[str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with_lpips = has_lpips(rows)
    header = ["codec", "setting", "bpp", "PSNR", "MS-SSIM", "sharpness", "sharpness ½", "enc s", "dec s"]
    header += ["LPIPS-Alex"] if with_lpips else []
    lines = [f"Images: {n_images}; model {codec.model.name} ({codec.model.manifest['model_id'][:8]}); commit {commit}; "
             f"{platform.processor() or platform.machine()}, {platform.system()}; ORT CPU provider.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cs = curves(rows)
    for name, pts in cs.items():
        for p in pts:
            extra = f" {p['lpips']:.4f} |" if with_lpips else ""
            lines.append(f"| {name} | {p['setting']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | "
                         f"{p['sharpness']:.2f} | {p['sharpness_half']:.2f} | {p['encode_s']:.2f} | "
                         f"{p['decode_s']:.2f} |{extra}")
    lines += ["", "Lowest mean rate each codec reached (no extrapolation):", ""]
    for name, pts in cs.items():
        lines.append(f"- {name}: {pts[0]['bpp']:.4f} bpp (setting {pts[0]['setting']})")
    if picked:
        total = sum(picked.values())
        lines += ["", f"`auto` chose, over {total} tiles: "
                  + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(picked.items()))]
    lines += targets(cs)
    lines += ladders(cs)
    ours = [p for p in cs.get("HybridFlow", []) if p["setting"] != "auto"]
    if len(ours) >= 2:
        lines += ["", "BD-rate / BD-PSNR of HybridFlow (schedules none…all) against each codec, "
                  f"points ≤ {MAX_BPP} bpp, overlapping range only "
                  "(negative BD-rate = HybridFlow needs fewer bits):", ""]
        r1 = np.array([p["bpp"] for p in ours])
        d1 = np.array([p["psnr"] for p in ours])
        for name, pts in cs.items():
            if name == "HybridFlow":
                continue
            sel = [p for p in pts if p["bpp"] <= MAX_BPP]
            if len(sel) < 2:
                lines.append(f"- vs {name}: fewer than 2 points ≤ {MAX_BPP} bpp, no curve to compare")
                continue
            rate, dpsnr = bd(np.array([p["bpp"] for p in sel]), np.array([p["psnr"] for p in sel]), r1, d1)
            fmt = (lambda v, u: "no overlap" if v is None else f"{v:+.1f}{u}")  # noqa: E731
            lines.append(f"- vs {name}: BD-rate {fmt(rate, ' %')}, BD-PSNR {fmt(dpsnr, ' dB')}")
    return "\n".join(lines) + "\n"


def targets(cs: dict[str, list[dict[str, float]]]) -> list[str]:
    """The stage-3 issue's claims, checked on the mean points (paper's figures in brackets)."""
    def at(codec: str, setting: str) -> dict[str, float] | None:
        return next((p for p in cs.get(codec, []) if p["setting"] == setting), None)

    h4, v4, cont = at("HybridFlow", "1_4"), at(VQ_ONLY, "1_4"), at("continuous-only", "none")
    auto = at("HybridFlow", "auto")
    if not (h4 and v4 and cont and auto):
        return []
    ok = (lambda c: "✔" if c else "✘")  # noqa: E731
    gain = h4["psnr"] - v4["psnr"]
    sharp = h4["sharpness"] / max(cont["sharpness"], 1e-9)
    sharp_half = h4["sharpness_half"] / max(cont["sharpness_half"], 1e-9)
    gap = cont["psnr"] - h4["psnr"]
    saving = 100 * (1 - auto["bpp"] / h4["bpp"])
    loss = h4["psnr"] - auto["psnr"]
    lines = ["", "Stage-3 targets (issue 6), on the mean points above:", "",
             f"- hybrid 1_4 at {h4['bpp']:.4f} bpp ≤ 0.05 {ok(h4['bpp'] <= 0.05)}; PSNR {gain:+.2f} dB over VQ-only "
             f"1_4 (target ≥ +2.0, paper +3.5) {ok(gain >= 2.0)}",
             f"- hybrid 1_4 sharpness {sharp:.1f}× continuous-only's (target ≥ 1.3) {ok(sharp >= 1.3)}, at half "
             f"resolution {sharp_half:.1f}× {ok(sharp_half >= 1.3)} (artefacts do not count there); PSNR "
             f"{gap:.2f} dB below continuous-only (target ≤ 1.5) {ok(gap <= 1.5)}",
             f"- auto saves {saving:.1f} % bpp against 1_4 at {loss:+.2f} dB PSNR loss (target ≥ 10 % at ≤ 0.3 dB, "
             f"paper 12.5 %) {ok(saving >= 10 and loss <= 0.3)}"]
    nc = at(NO_CORRECTION, "1_4")
    if nc:
        lines.append(f"- the correction network adds {h4['psnr'] - nc['psnr']:+.2f} dB at 1_4 "
                     f"(same stream decoded by the plain VQ decoder: {nc['psnr']:.2f} dB)")
    return lines


def plot(rows: list[dict[str, object]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots")
        return
    cs = curves(rows)
    panels = [("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("sharpness", "sharpness ratio"),
              ("sharpness_half", "sharpness ratio at ½ resolution (artefacts vanish)")]
    if has_lpips(rows):
        panels.append(("lpips", "LPIPS-Alex (lower is better)"))
    for metric, label in panels:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for name, pts in cs.items():
            pts = [p for p in pts if p["bpp"] <= 0.3]
            if not pts:
                continue
            style = "o-" if name == "HybridFlow" else ("s" if "only" in name else ".--")
            ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], style, label=name)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"rd_{metric.replace('ms_ssim', 'msssim')}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
