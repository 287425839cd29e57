"""Quality presets and rate control (runtime/ratecontrol.py), measured.

    python -m benchmarks.ladder candidates [--folder DIR] [--every 3] [--csv runs/ladder/val.csv]
        every rate point × mask on a folder (default val): per image bpp, PSNR, LPIPS-Alex, and per
        tile the MSE, LPIPS-Alex, index bits and complexity score. Resumable (rows already in the CSV
        are kept). This is what LADDER and the search's order were chosen from: run it on val only.
    python -m benchmarks.ladder choose [--csv runs/ladder/val.csv]
        from those rows: the mean point of every configuration, the chain of configurations whose
        bpp, PSNR and LPIPS-Alex all improve, what each level of the search's upgrade path buys per
        bit, and how well each tile order would fill a budget (simulated from the per-tile rows).
    python -m benchmarks.ladder fill --path "SPEC|SPEC…" [--targets 0.03,0.035] [--limit 24]
        how well each candidate search path fills --target-bpp budgets on a folder (default val).
    python -m benchmarks.ladder report [--folder DIR] [--out benchmarks/out] [--no-decode]
        what a user gets: every --quality preset (bpp, PSNR, LPIPS-Alex), the default (no flags),
        --target-bpp 0.03, and --max-bytes at several budgets per image (violations counted, not
        assumed); a plot of the ladder. --no-decode measures sizes only (big photos).

bpp always comes from the real bytes; LPIPS-Alex from ``../shared/weights/lpips`` (runtime/metrics.lpips_alex)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.kodak import load_images
from hybridflow.models.data import data_root
from hybridflow.runtime import Codec, metrics, ratecontrol
from hybridflow.runtime.masking import SCHEDULES, sent_mask
from hybridflow.runtime.ratecontrol import DEFAULT_MAX_BPP, LADDER, RateError

MASKS = ("all", "1_16", "1_9", "auto", "1_4", "1_2", "none")
TARGET_BPP = 0.03
MIN_TILE_LPIPS = 32  # pixels per side: smaller tile remnants get no per-tile LPIPS


def _compress(codec: Codec, rgb: np.ndarray, offset: int, mask: str) -> bytes:
    """The stream of one candidate, literally: rate point base + ``offset`` (the nearest the model
    has); ``mask`` "continuous" = the continuous stream alone."""
    p = ratecontrol.Preset(offset, "none", "continuous") if mask == "continuous" else ratecontrol.Preset(offset, mask)
    stream, rate, m = ratecontrol.resolve(codec.model, p)
    return codec.compress(rgb, mask=m, stream=stream, rate=rate)


def _context(codec: Codec, images: int, folder: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (f"model {codec.model.name} ({codec.model.manifest['model_id'][:8]}), {images} images of {folder}, "
            f"commit {commit}, {platform.machine()} {platform.system()}, ORT CPU provider")


def _lpips(folder: str | None) -> metrics.Perceptual:
    perceptual = metrics.lpips_alex(folder, say=print)
    if perceptual is None:
        raise SystemExit("LPIPS-Alex is needed here")
    return perceptual


# ------------------------------------------------------------------------------------ candidates
def candidates(args: argparse.Namespace) -> None:
    folder = args.folder or data_root() / "val"
    images = load_images(folder, args.limit)[:: args.every]
    codec = Codec.load(args.model, provider="cpu")
    perceptual = _lpips(args.lpips)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.csv.exists():
        done = {(r["image"], int(r["rate"]), r["mask"]) for r in csv.DictReader(args.csv.open())}
    count, base = ratecontrol.rate_points(codec.model)
    offsets = [int(v) for v in args.offsets.split(",")] if args.offsets else [k - base for k in range(count)]
    masks = args.masks.split(",")
    prior = codec.model.tables.index_prior.astype(np.float64)
    bits = -np.log2(prior / prior.sum())
    t0 = time.time()
    with args.csv.open("a", newline="") as f:
        w = None
        for name, rgb in images:
            todo = [(r, m) for r in offsets for m in masks if (name, r, m) not in done]
            if not todo:
                continue
            an = ratecontrol._analyse(codec, rgb, "hybrid", None)  # index maps and tile order, once per image
            cm, g = codec.model.complexity, codec.geometry.grid
            score = [cm.score(rgb[an.grid.valid_region(t)]) for t in range(an.grid.count)]
            tile_bits = {m: [float(bits[an.maps[t][sent_mask(m, g) & an.grid.valid_tokens(t, g)]].sum())
                             for t in range(an.grid.count)] for m in SCHEDULES}
            for rate, mask in todo:
                data = _compress(codec, rgb, rate, mask)
                rec = codec.decompress(data)
                q = metrics.quality(rgb, len(data), rec, perceptual)
                tiles = []
                sched = codec.read_header(data)[0].schedules or [SCHEDULES.index("all")] * an.grid.count
                for t in range(an.grid.count if args.tiles else 0):
                    region = an.grid.valid_region(t)
                    a, b = rgb[region].astype(np.float64), rec[region].astype(np.float64)
                    small = min(a.shape[:2]) < MIN_TILE_LPIPS
                    tiles.append({"mse": float(np.mean((a - b) ** 2)), "pixels": a.shape[0] * a.shape[1],
                                  "lpips": None if small else perceptual(rgb[region], rec[region]),
                                  "bits": tile_bits[SCHEDULES[sched[t]]][t],
                                  "score": score[t], "schedule": SCHEDULES[sched[t]]})
                row = {"image": name, "rate": rate, "mask": mask, "bytes": len(data), "bpp": q["bpp"],
                       "psnr": q["psnr"], "lpips": q["lpips"], "tiles": json.dumps(tiles),
                       "tile_bits": json.dumps(tile_bits)}
                if w is None:
                    w = csv.DictWriter(f, fieldnames=list(row))
                    if f.tell() == 0:
                        w.writeheader()
                w.writerow(row)
                f.flush()
            print(f"{name}: {len(todo)} configurations ({time.time() - t0:.0f} s)", flush=True)


# ---------------------------------------------------------------------------------------- choose
def _load(path: Path) -> list[dict]:
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        r["rate"] = int(r["rate"])
        for k in ("bytes", "bpp", "psnr", "lpips"):
            r[k] = float(r[k])
        r["tiles"] = json.loads(r["tiles"])
        r["tile_bits"] = json.loads(r["tile_bits"])
    return rows


def _means(rows: list[dict]) -> dict[tuple[int, str], dict[str, float]]:
    out: dict[tuple[int, str], dict[str, float]] = {}
    for key in sorted({(r["rate"], r["mask"]) for r in rows}):
        sel = [r for r in rows if (r["rate"], r["mask"]) == key]
        out[key] = {k: float(np.mean([r[k] for r in sel])) for k in ("bpp", "psnr", "lpips")}
        out[key]["n"] = len(sel)
    return out


def choose(args: argparse.Namespace) -> None:
    rows = _load(args.csv)
    configs = {(r["rate"], r["mask"]) for r in rows}
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["image"], set()).add((r["rate"], r["mask"]))
    images = sorted(i for i, c in have.items() if c == configs)  # images with every configuration
    rows = [r for r in rows if r["image"] in images]
    complete = _means(rows)
    print(f"{len(images)} images with all {len(configs)} configurations, {len(rows)} rows from {args.csv}\n")
    print("| rate point (offset from base) | mask | bpp | PSNR | LPIPS-Alex |\n|---|---|---|---|---|")
    for (rate, mask), m in sorted(complete.items(), key=lambda kv: kv[1]["bpp"]):
        print(f"| {rate} | {mask} | {m['bpp']:.4f} | {m['psnr']:.2f} | {m['lpips']:.4f} |")
    # the chain: from the cheapest point, each next point is the cheapest one better in both metrics
    pts = sorted(complete.items(), key=lambda kv: kv[1]["bpp"])
    chain = [pts[0]]
    for key, m in pts[1:]:
        last = chain[-1][1]
        if m["psnr"] > last["psnr"] and m["lpips"] < last["lpips"]:
            chain.append((key, m))
    print("\nChain of configurations that improve bpp, PSNR and LPIPS-Alex together (ladder candidates):")
    print(" → ".join(f"({r}, {mk})" for (r, mk), _ in chain))
    # ratecontrol.PATH is given (--path, default the landed one) and checked here. The search keeps the highest
    # rung that fits and fills the budget from it by upgrading tiles at its rate point, so PATH needs rungs all
    # along the range, hybrid ones at a low rate point too (a busy image's hybrid stream at the base point can
    # exceed the default cap: without them it would fall back to the continuous stream alone, LPIPS-Alex ≈ 0.8).
    # Every step must raise bpp, lower LPIPS-Alex and *contain* the last rung (_contains: means on val alone let
    # a step trade rate point for indices, which other images score the other way; s10 on Kodak: 1:1_4 →
    # -1:none lost 0.06 dB); a step that loses PSNR is shown (continuous → hybrid at one rate point does).
    path = [(p.rate_offset, "continuous" if p.stream == "continuous" else p.mask)
            for p in ratecontrol._chain(args.path)]
    missing = [k for k in path if k not in complete]
    if missing:
        raise SystemExit(f"no candidates measured for {missing}")
    print("\nratecontrol.PATH, checked: Δ from the rung before (bpp ↑, PSNR ↑, LPIPS-Alex ↓, contains it)")
    print("| rung | bpp | PSNR | LPIPS-Alex | ok |\n|---|---|---|---|---|")
    for a, b in zip([None] + path, path):
        m = complete[b]
        checks = {} if a is None else _step(complete, a, b)
        ok = " ".join(f"{name}{'✔' if good else '✘'}" for name, good in checks.items())
        print(f"| {_spec([b])} | {m['bpp']:.4f} | {m['psnr']:.2f} | {m['lpips']:.4f} | {ok} |")
    # The presets: the rungs of PATH that keep all three rising (each better than the last one kept, and
    # containing it), then both ends and the rungs nearest an even spacing of log bpp between them.
    rising = [path[0]]
    for k in path[1:]:
        if all(_step(complete, rising[-1], k).values()):
            rising.append(k)
    ladder = _spread(rising, complete, len(LADDER))
    print(f"\nratecontrol.LADDER ({len(ladder)} of the {len(rising)} rungs of PATH along which bpp, PSNR and "
          "LPIPS-Alex all rise, spread evenly in log bpp):")
    print(_spec(ladder))
    _levels(rows, complete)
    _orders(rows)


def _contains(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Configuration ``a`` carries at least what ``b`` does: a rate point as high and every index ``b`` sends
    (runtime/masking.py; the continuous stream alone sends none, as mask "all")."""
    def sent(mask: str) -> np.ndarray:
        return sent_mask("all" if mask == "continuous" else mask)

    return a[0] >= b[0] and bool((sent(a[1]) >= sent(b[1])).all())


def _step(complete: dict, a: tuple[int, str], b: tuple[int, str]) -> dict[str, bool]:
    """Whether rung ``b`` improves on rung ``a``, check by check: mean bpp up, PSNR up, LPIPS-Alex down, and it
    contains ``a``."""
    ma, mb = complete[a], complete[b]
    return {"bpp": mb["bpp"] > ma["bpp"], "PSNR": mb["psnr"] > ma["psnr"], "LPIPS": mb["lpips"] < ma["lpips"],
            "contains": _contains(b, a)}


def _spec(path: list[tuple[int, str]]) -> str:
    """The chain in ``ratecontrol._chain``'s notation."""
    return " ".join(f"c{r}" if mk == "continuous" else f"{r}:{mk}" for r, mk in path)


def _spread(path: list[tuple[int, str]], complete: dict, n: int) -> list[tuple[int, str]]:
    """``n`` rungs of ``path`` (cheapest first): both ends, and for each even step of log bpp between them
    the nearest rung not taken yet."""
    if len(path) <= n:
        return list(path)
    logs = [math.log(complete[k]["bpp"]) for k in path]
    chosen = {0, len(path) - 1}
    for t in np.linspace(logs[0], logs[-1], n)[1:-1]:
        chosen.add(min((i for i in range(len(path)) if i not in chosen), key=lambda i: abs(logs[i] - t)))
    return [path[i] for i in sorted(chosen)]


def _levels(rows: list[dict], complete: dict) -> None:
    """What each step of the search's upgrade path buys per bit, at each rate point (mean points)."""
    print("\nUpgrade path, per step (mean over images): Δbpp, ΔPSNR/Δbpp (dB per bpp), −ΔLPIPS/Δbpp")
    for rate in sorted({r for r, _ in complete}):
        line = []
        for a, b in zip(ratecontrol.UPGRADES, ratecontrol.UPGRADES[1:]):
            if (rate, a) not in complete or (rate, b) not in complete:
                continue
            pa, pb = complete[(rate, a)], complete[(rate, b)]
            d = pb["bpp"] - pa["bpp"]
            gain_psnr, gain_lpips = (pb["psnr"] - pa["psnr"]) / d, (pa["lpips"] - pb["lpips"]) / d
            line.append(f"{a}→{b}: {d:+.4f}, {gain_psnr:+.0f}, {gain_lpips:+.2f}")
        if line:
            print(f"- rate point {rate:+d}: " + "; ".join(line))


def _orders(rows: list[dict]) -> None:
    """Simulate the search's path (level by level) under different tile orders, from per-tile rows:
    a tile's MSE / LPIPS at a level is what it had in the uniform stream at that level (tiles are
    predicted independently; only the pixel decoder's margin crosses tile borders). Each order's
    quality is read at the same index-bit budgets (interpolated along its path), then averaged."""
    by = {(r["image"], r["rate"], r["mask"]): r for r in rows}
    levels = ratecontrol.UPGRADES
    rng = np.random.default_rng(0)
    orders = {
        "busy first (score ↓)": lambda tiles, gain, cost: sorted(range(len(tiles)), key=lambda t: -tiles[t]["score"]),
        "calm first (score ↑)": lambda tiles, gain, cost: sorted(range(len(tiles)), key=lambda t: tiles[t]["score"]),
        "cheapest first (index bits ↑)": lambda tiles, gain, cost: sorted(range(len(tiles)), key=lambda t: cost[t]),
        "random": lambda tiles, gain, cost: list(rng.permutation(len(tiles))),
        "oracle (measured MSE gain per bit ↓)": lambda tiles, gain, cost: sorted(range(len(tiles)),
                                                                                key=lambda t: -gain[t] / cost[t]),
    }
    results: dict[str, list[np.ndarray]] = {k: [] for k in orders}
    for image, rate in sorted({(r["image"], r["rate"]) for r in rows}):
        per_level = [by.get((image, rate, m)) for m in levels]
        if any(p is None or not p["tiles"] for p in per_level):
            continue
        tiles = per_level[0]["tiles"]
        n = len(tiles)
        pixels = np.array([t["pixels"] for t in tiles], float)
        mse = np.array([[p["tiles"][t]["mse"] for t in range(n)] for p in per_level])  # (levels, tiles)
        lp = np.array([[np.nan if p["tiles"][t]["lpips"] is None else p["tiles"][t]["lpips"] for t in range(n)]
                       for p in per_level])
        bits = np.array([[per_level[0]["tile_bits"][m][t] for t in range(n)] for m in levels])
        gain = (mse[0] - mse[-1]) * pixels  # what the whole path buys each tile (oracle only)
        cost = np.maximum(bits[-1] - bits[0], 1.0)
        curves = {}
        for name, order_of in orders.items():
            order = order_of(tiles, gain, cost)
            pts = []
            for k in range((len(levels) - 1) * n + 1):
                level, extra = divmod(k, n)
                lev = np.full(n, level)
                lev[order[:extra]] = min(level + 1, len(levels) - 1)
                m = (mse[lev, np.arange(n)] * pixels).sum() / pixels.sum()
                lv = lp[lev, np.arange(n)]
                ok = ~np.isnan(lv)
                pts.append((bits[lev, np.arange(n)].sum(), 10 * np.log10(255**2 / m),
                            (lv[ok] * pixels[ok]).sum() / pixels[ok].sum()))
            curves[name] = np.array(pts)
        budgets = np.linspace(bits[0].sum(), bits[-1].sum(), 41)[1:-1]  # every order starts and ends alike
        for name, c in curves.items():
            results[name].append(np.array([np.interp(budgets, c[:, 0], c[:, 1]).mean(),
                                           np.interp(budgets, c[:, 0], c[:, 2]).mean()]))
    n_images = len(next(iter(results.values())))
    if not n_images:
        return
    print(f"\nTile order along the path ({n_images} images; mean over 39 index-bit budgets spread over the path):")
    print("| order | PSNR | LPIPS-Alex |\n|---|---|---|")
    for name, vals in results.items():
        if vals:
            v = np.mean(vals, axis=0)
            print(f"| {name} | {v[0]:.3f} | {v[1]:.4f} |")


# ---------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace) -> None:
    folder = args.folder or data_root() / "kodak"
    images = load_images(folder, args.limit)
    codec = Codec.load(args.model, provider="cpu")
    perceptual = None if args.no_decode else _lpips(args.lpips)
    label = args.label or folder.name
    rows: list[dict[str, object]] = []

    def measure(setting: str, name: str, rgb: np.ndarray, data: bytes) -> None:
        row: dict[str, object] = {"setting": setting, "image": name, "bytes": len(data),
                                  "bpp": 8 * len(data) / (rgb.shape[0] * rgb.shape[1])}
        if not args.no_decode:
            q = metrics.quality(rgb, len(data), codec.decompress(data), perceptual)
            row.update(psnr=q["psnr"], lpips=q["lpips"])
        rows.append(row)

    t0 = time.time()
    violations, checks, unreachable = 0, 0, []
    for name, rgb in images:
        pixels = rgb.shape[0] * rgb.shape[1]
        for q in range(1, len(LADDER) + 1):
            measure(f"quality {q}", name, rgb, codec.compress(rgb, quality=q))
        measure("default", name, rgb, codec.compress(rgb))
        try:
            measure(f"target {TARGET_BPP}", name, rgb, codec.compress(rgb, target_bpp=TARGET_BPP))
        except RateError as e:
            unreachable.append(f"{name} ({8 * e.smallest / pixels:.4f} bpp)")
        for bpp in (0.02, 0.03, 0.04, 0.06):  # --max-bytes: exact at every budget
            budget = int(bpp * pixels / 8) + 7  # an odd count, not a round one
            try:
                data = codec.compress(rgb, max_bytes=budget)
            except RateError as e:
                assert e.smallest > budget
                continue
            checks += 1
            violations += len(data) > budget
        print(f"{name}: done ({time.time() - t0:.0f} s)", flush=True)
    text = _report_text(rows, codec, len(images), folder, label, violations, checks, unreachable, args.no_decode)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"ladder_{label}.md").write_text(text)
        with open(args.out / f"ladder_{label}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}, key=list(rows[-1]).index))
            w.writeheader()
            w.writerows(rows)
        if not args.no_decode:
            _plot(rows, args.out / f"ladder_{label}.png", label)


def _report_text(rows: list[dict], codec: Codec, n: int, folder: Path, label: str, violations: int, checks: int,
                 unreachable: list[str], sizes_only: bool) -> str:
    settings = list(dict.fromkeys(str(r["setting"]) for r in rows))
    lines = [f"{_context(codec, n, folder)}", ""]
    head = "| setting | preset | images | mean bpp | max bpp |" + ("" if sizes_only else " PSNR | LPIPS-Alex |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for s in settings:
        sel = [r for r in rows if r["setting"] == s]
        bpp = np.array([r["bpp"] for r in sel])
        preset = ""
        if s.startswith("quality"):
            stream, rate, mask = ratecontrol.preset(codec.model, int(s.split()[1]))
            preset = f"rate {rate}, " + ("continuous stream" if stream == "continuous" else mask)
        line = f"| {s} | {preset} | {len(sel)} | {bpp.mean():.4f} | {bpp.max():.4f} |"
        if not sizes_only:
            line += f" {np.mean([r['psnr'] for r in sel]):.2f} | {np.mean([r['lpips'] for r in sel]):.4f} |"
        lines.append(line)
    ok = (lambda c: "✔" if c else "✘")  # noqa: E731
    target = np.array([r["bpp"] for r in rows if r["setting"] == f"target {TARGET_BPP}"])
    default = np.array([r["bpp"] for r in rows if r["setting"] == "default"])
    lines += ["", f"Targets on {label}:", ""]
    if len(target):
        lines.append(f"- `--target-bpp {TARGET_BPP}`: {len(target)} of {n} images reachable, max {target.max():.4f} "
                     f"bpp {ok(target.max() <= TARGET_BPP)}, mean {target.mean():.4f} (target ≥ 0.027) "
                     f"{ok(target.mean() >= 0.027 and not unreachable)}"
                     + (f"; unreachable (smallest stream): {', '.join(unreachable)}" if unreachable else ""))
    else:
        lines.append(f"- `--target-bpp {TARGET_BPP}`: unreachable on every image ✘")
    lines.append(f"- `--max-bytes`: {checks} reachable budgets (4 per image, 0.02…0.06 bpp), {violations} streams "
                 f"over their budget {ok(violations == 0)}")
    lines.append(f"- no flags: max {default.max():.4f} bpp (target ≤ {DEFAULT_MAX_BPP}) "
                 f"{ok(default.max() <= DEFAULT_MAX_BPP)}, mean {default.mean():.4f}")
    if not sizes_only:
        ladder = [[r for r in rows if r["setting"] == f"quality {q}"] for q in range(1, len(LADDER) + 1)]
        means = [(np.mean([r["bpp"] for r in s]), np.mean([r["psnr"] for r in s]), np.mean([r["lpips"] for r in s]))
                 for s in ladder]
        mono = all(b[0] >= a[0] and b[1] >= a[1] and b[2] <= a[2] for a, b in zip(means, means[1:]))
        lines.append(f"- ladder monotone (mean bpp, PSNR and LPIPS-Alex from each quality to the next): {ok(mono)}; "
                     f"spans {means[0][0]:.4f} … {means[-1][0]:.4f} bpp")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = list(range(1, len(LADDER) + 1))
    pts = {s: [r for r in rows if r["setting"] == s] for s in [f"quality {q}" for q in qs] + ["default",
                                                                                            f"target {TARGET_BPP}"]}
    mean = {s: {k: float(np.mean([r[k] for r in v])) for k in ("bpp", "psnr", "lpips")} for s, v in pts.items() if v}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, name in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "lpips", "LPIPS-Alex (lower is better)")):
        ladder = [mean[f"quality {q}"] for q in qs]
        ax.plot([p["bpp"] for p in ladder], [p[key] for p in ladder], "o-", label="--quality 1…N")
        for q, p in zip(qs, ladder):
            ax.annotate(str(q), (p["bpp"], p[key]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        for s, marker in (("default", "s"), (f"target {TARGET_BPP}", "^")):
            if s in mean:
                ax.plot(mean[s]["bpp"], mean[s][key], marker, label="no flags" if s == "default" else f"--target-bpp "
                        f"{TARGET_BPP}")
        ax.set_xlabel("bits per pixel (mean)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"HybridFlow quality presets on {label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ fill
def fill(args: argparse.Namespace) -> None:
    """How well each candidate PATH (``--path``, several separated by "|") fills ``--target-bpp`` budgets:
    mean bpp, PSNR and LPIPS-Alex of the streams the search returns (on val: this chose PATH between rungs).
    Each image is analysed once; a path only changes which rungs ``ratecontrol.fit`` tries."""
    folder = args.folder or data_root() / "val"
    images = load_images(folder, args.limit)
    codec = Codec.load(args.model, provider="cpu")
    perceptual = _lpips(args.lpips)
    print(f"{_context(codec, len(images), folder)}\n")
    print("| target bpp | PATH | bpp | PSNR | LPIPS-Alex |\n|---|---|---|---|---|")
    analyses = [(rgb, ratecontrol._analyse(codec, rgb, "hybrid", None)) for _, rgb in images]
    decoded: dict[bytes, np.ndarray] = {}  # paths often choose the same stream
    for target in (float(t) for t in args.targets.split(",")):
        for spec in args.path.split("|"):
            path = ratecontrol._chain(spec)
            scores = []
            for rgb, an in analyses:
                pixels = rgb.shape[0] * rgb.shape[1]
                budget = ratecontrol.bpp_budget(target, pixels)
                rungs = ratecontrol._rungs(codec, "hybrid", an.levels, path)
                best, smallest = ratecontrol.fit(replace(an, rungs=rungs), budget)
                if best is None:
                    raise RateError(budget, len(smallest.data), pixels)
                if best.data not in decoded:
                    decoded[best.data] = codec.decompress(best.data)
                q = metrics.quality(rgb, len(best.data), decoded[best.data], perceptual)
                scores.append((q["bpp"], q["psnr"], q["lpips"]))
            bpp, psnr, lp = np.mean(scores, axis=0)
            print(f"| {target} | {spec.strip()} | {bpp:.4f} | {psnr:.2f} | {lp:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("candidates", "choose", "report", "fill"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=None)
        p.add_argument("--folder", type=Path, default=None)
        p.add_argument("--limit", type=int, default=None)
        p.add_argument("--every", type=int, default=1, help="every k-th image only (candidates: 3 = 29 of val's 86)")
        p.add_argument("--offsets", default="", help="candidates: rate points as offsets from the base (default all)")
        p.add_argument("--masks", default=",".join(MASKS), help="candidates: masks, or 'continuous' (the stream alone)")
        p.add_argument("--no-tiles", dest="tiles", action="store_false", help="candidates: no per-tile rows")
        p.add_argument("--lpips", default=None)
        p.add_argument("--csv", type=Path, default=Path("runs/ladder/val.csv"))
        p.add_argument("--path", default=ratecontrol.PATH_SPEC, help="choose: the search path to check; fill: "
                       "candidate paths separated by '|'")
        p.add_argument("--targets", default="0.03,0.035,0.04,0.045", help="fill: --target-bpp values")
        p.add_argument("--out", type=Path, default=None)
        p.add_argument("--label", default=None)
        p.add_argument("--no-decode", action="store_true")
    args = ap.parse_args()
    {"candidates": candidates, "choose": choose, "report": report, "fill": fill}[args.command](args)


if __name__ == "__main__":
    main()
