"""Resident memory of one shared ``Codec`` under concurrent decompress calls (issue 21.11).

    python -m benchmarks.concurrency [--model DIR] [--calls 16] [--size 512x768]

Each configuration runs in a fresh process: N threads call ``decompress`` on one Codec at the same
moment; RSS is sampled every 10 ms. Reported: RSS after one warm-up decode (base), peak during the
burst, RSS 2 s after the burst (idle), and the burst's wall time. Configurations: onnxruntime's CPU
arena on/off × the Model's concurrent-run cap (0 = none, the old behaviour is arena on + no cap)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.synthetic import photo_like


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str | None, calls: int, size: tuple[int, int], arena: bool, cap: int) -> dict:
    from hybridflow.runtime import Codec, session

    session.CPU_MEM_ARENA = arena
    codec = Codec.load(model, provider="cpu")
    codec.model.max_concurrent_runs = cap
    data = codec.compress(photo_like(*size, seed=1))
    codec.decompress(data)
    time.sleep(0.5)
    base = rss_mb()
    peak, stop = [base], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = threading.Barrier(calls)

    def call(_: int) -> int:
        start.wait()
        return codec.decompress(data).size

    t0 = time.perf_counter()
    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(call, range(calls)))
    wall = time.perf_counter() - t0
    time.sleep(2.0)
    stop.set()
    sampler.join()
    return {"model": codec.model.name, "model_id": codec.model.model_id.hex(), "bytes": len(data),
            "arena": arena, "cap": cap, "calls": calls, "base_mb": round(base), "peak_mb": round(max(peak)),
            "idle_mb": round(rss_mb()), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--size", default="512x768", help="image height×width")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.child:
        arena, cap = json.loads(args.child)
        print(json.dumps(child(args.model, args.calls, size, arena, cap)))
        return
    import os

    from hybridflow.runtime.model import MAX_CONCURRENT_RUNS

    configs = [(True, 0), (False, 0), (False, MAX_CONCURRENT_RUNS)]
    print(f"{args.calls} simultaneous decompress calls on one Codec, {size[0]}×{size[1]} synthetic image, "
          f"{os.cpu_count()} CPUs")
    for arena, cap in configs:
        cmd = [sys.executable, "-m", "benchmarks.concurrency", "--calls", str(args.calls), "--size", args.size,
               "--child", json.dumps([arena, cap])] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"arena {'on ' if arena else 'off'}, cap {cap or 'none'}"
        print(f"{label:22s} model {r['model']} ({r['model_id']}), {r['bytes']} B stream: base {r['base_mb']} MB, "
              f"peak {r['peak_mb']} MB, idle after 2 s {r['idle_mb']} MB, burst {r['wall_s']} s")


if __name__ == "__main__":
    main()
