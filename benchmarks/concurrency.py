"""Resident memory of one shared ``Codec`` under concurrent decompress calls (issue 21.11).

    python -m benchmarks.concurrency [--model DIR] [--calls 16] [--size 512x768]

Each configuration runs in a fresh process: N threads call ``decompress`` on one Codec at the same
moment; RSS is sampled every 10 ms. Reported: RSS after one warm-up decode (base), peak during the
burst, RSS 2 s after the burst (idle), and the burst's wall time. Configurations: one call alone, then
N calls under the runtime's defaults and under other caps — ``[arena, runs, windows]`` = onnxruntime's
CPU arena on/off, the Model's cap on concurrent graph runs and, of those, on window-decoder runs
(0 = no cap; session 7's runtime was arena on, no caps). The 512×768 default is a Kodak-size image."""

from __future__ import annotations

import argparse
import json
import resource
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


# onnxruntime's CPU arena: none, kept for the session's life, shrunk once the Model is idle (runtime/model.py)
ARENAS = ("off", "kept", "shrunk")


def child(model: str | None, calls: int, size: tuple[int, int], arena: str, cap: int, windows: int) -> dict:
    from hybridflow.runtime import Codec, session

    session.CPU_MEM_ARENA, session.SHRINK_ARENA = arena != "off", arena == "shrunk"
    codec = Codec.load(model, provider="cpu")
    codec.model.max_concurrent_runs = cap
    codec.model.max_concurrent_windows = windows
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

    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(call, range(calls)))
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(2.0)
    stop.set()
    sampler.join()
    return {"model": codec.model.name, "model_id": codec.model.model_id.hex(), "bytes": len(data),
            "arena": arena, "cap": cap, "windows": windows, "calls": calls, "base_mb": round(base),
            "peak_mb": round(max(peak)), "idle_mb": round(rss_mb()), "wall_s": round(wall, 2),
            "user_s": round(r1.ru_utime - r0.ru_utime, 2), "sys_s": round(r1.ru_stime - r0.ru_stime, 2),
            "page_faults": r1.ru_minflt - r0.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--size", default="512x768", help="image height×width")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.child:
        print(json.dumps(child(args.model, args.calls, size, *json.loads(args.child))))
        return
    import os

    from hybridflow.runtime import session
    from hybridflow.runtime.model import MAX_CONCURRENT_RUNS, MAX_CONCURRENT_WINDOWS

    arena = ARENAS[session.CPU_MEM_ARENA + (session.CPU_MEM_ARENA and session.SHRINK_ARENA)]
    default = [arena, MAX_CONCURRENT_RUNS, MAX_CONCURRENT_WINDOWS]
    configs = [(1, default), (1, ["off", *default[1:]]), (1, ["kept", *default[1:]]),
               (args.calls, default), (args.calls, ["off", *default[1:]]), (args.calls, [arena, default[1], 0]),
               (args.calls, ["off", default[1], 0])]
    print(f"Simultaneous decompress calls on one Codec, {size[0]}×{size[1]} synthetic image, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; defaults: arena {default[0]}, at most {default[1]} graph runs "
          f"and {default[2]} window-decoder run at once (0: no cap)")
    for calls, config in configs:
        cmd = [sys.executable, "-m", "benchmarks.concurrency", "--calls", str(calls), "--size", args.size,
               "--child", json.dumps(config)] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        arena, cap, windows = config
        label = f"{calls:2d} call{'s' if calls > 1 else ' '}, arena {arena:6s}, runs {cap}, windows {windows}"
        print(f"{label:40s} base {r['base_mb']:4d} MB, peak {r['peak_mb']:4d} MB, idle after 2 s {r['idle_mb']:4d} MB; "
              f"{r['wall_s']:5.2f} s, CPU {r['user_s']:5.2f} s user + {r['sys_s']:4.2f} s system, "
              f"{r['page_faults']} page faults{' (defaults)' if config == default else ''}")
    print(f"model {r['model']} (id {r['model_id']}), {r['bytes']} B stream")


if __name__ == "__main__":
    main()
