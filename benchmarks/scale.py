"""Scale-out throughput: ``hf-run compress --engine ray`` with 1 worker × 1 thread vs 2 workers × 1 thread.

    python -m benchmarks.scale [--images 40] [--rounds 2] [--model DIR] [--mask auto] [--out benchmarks/out/scale.txt]

Why: issue 19's target is that two workers deliver ≥ 1.7× the images/s of one on a 40-image folder,
with outputs byte-identical to the sequential path. Everything below runs in one process, in this
order, on the same images (the first N of ``$HF_DATA/val`` by name, copied to a temporary folder that
is deleted afterwards):

1. the sequential reference: one plain process running the API with one thread (what ``hf-run
   compress`` runs), the model loaded first; per image the time to read and decode the file, to
   compress, to write the output. Its bytes are what the Ray runs must reproduce.
2. the machine's own ceiling, without Ray: two such processes, each with its model loaded, compress
   alternate images of the folder from a common start; rate vs step 1's. Both steps give each process
   one BLAS thread, as Ray does for an actor with one CPU.
3. Ray (a local Ray with 2 CPUs, as ``--engine ray`` starts it): an untimed warm-up run starts Ray
   Data's helper processes, then 1 and 2 workers alternate for ``--rounds`` rounds, each run into a
   fresh folder through ``scale.compress_archive``; each actor pool starts all its actors before its
   first file (``wait_for_min_actors_s``, set here only). Per run:
   - whole run: images ÷ the whole call, actor start-up (process, imports, model load) included;
   - steady: images ÷ (last image's end − first image's start), from the manifest's ``started`` and
     ``seconds``: the actors have loaded their models (``scale._Worker`` opens the graphs before the
     first file), and Ray's per-task overhead, the driver and the other Ray processes still count.
     This is the rate a large archive sees and the figure the target is judged on;
   - CPU seconds by process during the run (sampled from /proc): what the driver, Ray's own daemons
     and the workers spent.
   The best round of each configuration is compared (noise on a shared machine only slows a run).

The load average is written next to the figures: on a 2-core machine any other process competes
with the second worker."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hybridflow.runtime import Codec, scale
from hybridflow.runtime.codec import ENCODER_GRAPHS
from hybridflow.runtime.imageio import READABLE, read_image, write_bytes_atomic
from hybridflow.runtime.model import Model

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.7
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def data_root() -> Path:
    return Path(os.environ.get("HF_DATA", ROOT.parent / "shared" / "data"))


def pick_images(n: int, into: Path) -> list[Path]:
    files = sorted(f for f in (data_root() / "val").iterdir() if f.suffix.lower() in READABLE)[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} images in {data_root() / 'val'}, found {len(files)}")
    into.mkdir(parents=True)
    for f in files:
        shutil.copy(f, into / f.name)
    return sorted(into.iterdir())


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def load_codec(model: str | None) -> Codec:
    codec = Codec.load(model, provider="cpu", threads=1)
    codec.model.open(ENCODER_GRAPHS)
    return codec


def compress_files(codec: Codec, files: list[Path], out: Path, mask: str,
                   split: dict[str, float] | None = None) -> dict[str, bytes]:
    """What one ``hf-run compress`` process does per file; ``split`` collects seconds per step."""
    split = {} if split is None else split
    result = {}
    for f in files:
        t0 = time.perf_counter()
        rgb = read_image(f)[0]
        t1 = time.perf_counter()
        data = codec.compress(rgb, mask=mask)
        t2 = time.perf_counter()
        write_bytes_atomic(out / (f.stem + ".hfc"), data)
        t3 = time.perf_counter()
        for step, t in (("read + decode", t1 - t0), ("compress", t2 - t1), ("write", t3 - t2)):
            split[step] = split.get(step, 0.0) + t
        result[f.stem] = data
    return result


def _plain_worker(model: str | None, files: list[Path], out: Path, mask: str, start: Any, done: Any) -> None:
    codec = load_codec(model)
    compress_files(codec, files[:1], out, mask)  # untimed: first-call allocations
    split: dict[str, float] = {}
    start.wait()
    compress_files(codec, files, out, mask, split)
    done.put((time.time(), split))


def plain_processes(n: int, model: str | None, files: list[Path], out: Path,
                    mask: str) -> tuple[float, dict[str, float]]:
    """``n`` plain processes (``hf-run compress`` each), models loaded, alternate files from a common
    start → (images/s, seconds per step summed over the processes). One BLAS/OpenMP thread each, as
    Ray gives an actor with one CPU: NumPy's OpenBLAS otherwise starts a thread per core (measured:
    +50 % CPU per image from spinning threads, so a "1-thread" process used both cores)."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(n + 1), ctx.Queue()
    out.mkdir()
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the children's OpenBLAS when it loads
    try:
        procs = [ctx.Process(target=_plain_worker, args=(model, files[k::n], out, mask, start, done))
                 for k in range(n)]
        for p in procs:
            p.start()
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    start.wait()
    t0 = time.time()
    results = [done.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    split: dict[str, float] = {}
    for _, part in results:
        for k, v in part.items():
            split[k] = split.get(k, 0.0) + v
    return len(files) / (max(end for end, _ in results) - t0), split


# ----------------------------------------------------------------------------- CPU by process
def _descendants(root: int) -> dict[int, tuple[str, float]]:
    """pid → (kind, CPU seconds so far) of ``root`` and every process below it (Linux /proc)."""
    procs: dict[int, tuple[int, float, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        procs[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, cmd)
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found[pid] = (_kind(pid, procs[pid][2]), procs[pid][1])
        todo += children.get(pid, [])
    return found


def _kind(pid: int, cmd: str) -> str:
    if pid == os.getpid():
        return "driver (Ray Data's executor, manifest)"
    if "ray::MapWorker" in cmd:
        return "workers (actors)"
    for name in ("gcs_server", "raylet", "log_monitor", "dashboard", "runtime_env"):
        if name in cmd:
            return f"Ray {name}"
    if cmd.startswith("ray::"):  # Ray Data's helper actors, idle worker processes
        return f"Ray {cmd.split()[0]}"
    return "other"


class CpuSampler:
    """CPU seconds per kind of process over a stretch of time. Processes that end in between (the
    actors, when their dataset finishes) count up to their last sample (every 0.2 s)."""

    def __init__(self) -> None:
        self.first = _descendants(os.getpid())
        self.last = dict(self.first)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self.last.update(_descendants(os.getpid()))

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.last.update(_descendants(os.getpid()))
        spent: dict[str, float] = {}
        for pid, (kind, cpu) in self.last.items():
            spent[kind] = spent.get(kind, 0.0) + cpu - self.first.get(pid, (kind, 0.0))[1]
        return spent


# ---------------------------------------------------------------------------------- Ray runs
def ray_run(src: Path, dst: Path, workers: int, model: str | None, mask: str) -> dict[str, object]:
    """One ``compress_archive`` call into an empty ``dst``: its rates, phases and CPU by process."""
    sampler = CpuSampler()
    t0 = time.time()
    s = scale.compress_archive(str(src), str(dst), mask=mask, model=model, provider="cpu",
                               engine=scale.Engine(workers=workers, threads_per_worker=1))
    t1 = time.time()
    cpu = sampler.finish()
    rows = pq.read_table(s.manifest).to_pylist()
    if s.counts != {"ok": len(rows)}:
        raise SystemExit(f"run with {workers} worker(s) did not compress every image: {s.counts}")
    starts = [r["started"].timestamp() for r in rows]
    ends = [r["started"].timestamp() + r["seconds"] for r in rows]
    per_worker: dict[str, list[float]] = {}
    for r in rows:
        per_worker.setdefault(r["worker"], []).append(r["seconds"])
    return {"n": len(rows), "wall": t1 - t0, "startup": min(starts) - t0, "steady": max(ends) - min(starts),
            "tail": t1 - max(ends), "images": sorted(len(v) for v in per_worker.values()),
            "in_images": sum(sum(v) for v in per_worker.values()), "cpu": cpu, "load": loadavg()}


def best(runs: list[dict[str, object]], key: Callable[[dict[str, object]], float]) -> dict[str, object]:
    return max(runs, key=key)


def whole(r: dict[str, object]) -> float:
    return r["n"] / r["wall"]


def steady(r: dict[str, object]) -> float:
    return r["n"] / r["steady"]


class Report(list):
    """The output's lines, each printed as it comes (a run cut short by a time limit still shows them)."""

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        self.extend(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--mask", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scale.txt")
    args = ap.parse_args()

    import ray
    import ray.data

    model = Model.load(None if args.model is None else Path(args.model))
    lines = Report()
    lines.add(f"# benchmarks/scale.py — {time.strftime('%Y-%m-%d %H:%M:%S')}",
              f"command: python -m benchmarks.scale --images {args.images} --rounds {args.rounds} "
              f"--mask {args.mask}" + (f" --model {args.model}" if args.model else "")
              + f" (process nice {os.nice(0)})",
              f"model: {model.name} ({model.model_id.hex()})",
              f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ray {ray.__version__}",
              f"load average (1/5/15 min) at start: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="hf-scale-") as tmp_name:
        tmp = Path(tmp_name)
        files = pick_images(args.images, tmp / "src")
        sizes = sorted({read_image(f)[0].shape[:2] for f in files})
        lines.add(f"images: the first {len(files)} of {data_root() / 'val'} by name ({files[0].name} … "
                  f"{files[-1].name}; sizes {', '.join(f'{w}×{h}' for h, w in sizes)}); mask {args.mask}")

        # 1.–2. without Ray: the sequential path, then the machine's ceiling
        seq_rate, split = plain_processes(1, args.model, files, tmp / "seq", args.mask)
        t0 = time.perf_counter()
        load_codec(args.model)
        load_s = time.perf_counter() - t0
        lines.add("", f"1 plain process (sequential API, 1 thread), model loaded (a load takes {load_s:.2f} s): "
                  f"{seq_rate:.3f} images/s; per image: "
                  + ", ".join(f"{k} {1000 * v / len(files):.0f} ms" for k, v in split.items()))
        plain2, _ = plain_processes(2, args.model, files, tmp / "plain2", args.mask)
        lines.add(f"2 plain processes (no Ray), models loaded: {plain2:.3f} images/s = {plain2 / seq_rate:.2f}× "
                  f"one; load average now {loadavg()}")

        # 3. Ray
        scale.start_local(num_cpus=2, log_to_driver=False)
        # Every run's actor pool starts all its actors (models loaded) before the first file, so the
        # steady span begins with every worker ready; without it the first actor up takes files while
        # the second still starts (Ray Data's default, kept for users' runs: no worker waits for another).
        ray.data.DataContext.get_current().wait_for_min_actors_s = 300
        try:
            (tmp / "warm").mkdir()
            for f in files[:2]:
                shutil.copy(f, tmp / "warm" / f.name)
            ray_run(tmp / "warm", tmp / "warm-out", 2, args.model, args.mask)
            runs: dict[int, list[dict[str, object]]] = {1: [], 2: []}
            lines.add("", "| round | workers × threads | images per worker | whole run s | start-up s | steady s "
                      "| tail s | whole images/s | steady images/s | load average after |",
                      "|---|---|---|---|---|---|---|---|---|---|")
            for k in range(args.rounds):
                for workers in (1, 2):
                    r = ray_run(tmp / "src", tmp / f"out{workers}-{k}", workers, args.model, args.mask)
                    runs[workers].append(r)
                    lines.add(f"| {k + 1} | {workers} × 1 | {'+'.join(map(str, r['images']))} | {r['wall']:.2f} "
                              f"| {r['startup']:.2f} | {r['steady']:.2f} | {r['tail']:.2f} | {whole(r):.3f} "
                              f"| {steady(r):.3f} | {r['load']} |")
        finally:
            ray.shutdown()
        same = all((tmp / f"out{w}-{k}" / f.name).read_bytes() == f.read_bytes()
                   for f in (tmp / "seq").iterdir() for w in (1, 2) for k in range(args.rounds))
    one, two = best(runs[1], steady), best(runs[2], steady)
    speedup = steady(two) / steady(one)
    whole_speedup = whole(best(runs[2], whole)) / whole(best(runs[1], whole))
    kinds = sorted({k for r in (one, two) for k in r["cpu"]}, key=lambda k: -two["cpu"].get(k, 0.0))
    lines.add("", f"CPU seconds by process in the best steady run of each (sampled every 0.2 s; "
              f"the {one['n']} images' own seconds inside the workers: {one['in_images']:.2f} with 1 worker, "
              f"{two['in_images']:.2f} with 2):", "",
              "| process | 1 worker | 2 workers |", "|---|---|---|")
    lines.add(*[f"| {k} | {one['cpu'].get(k, 0.0):.2f} | {two['cpu'].get(k, 0.0):.2f} |" for k in kinds])
    lines.add("",
              f"best of {args.rounds}, steady (models loaded): 1 worker {steady(one):.3f}, 2 workers {steady(two):.3f} "
              f"images/s → {speedup:.2f}× (target ≥ {TARGET}×: {'met' if speedup >= TARGET else 'NOT met'}); "
              f"without Ray the machine gives {plain2 / seq_rate:.2f}×",
              f"best of {args.rounds}, whole run (actor start-up and model load included): {whole_speedup:.2f}×",
              f"outputs byte-identical to the sequential API (1 thread), every Ray run: {'yes' if same else 'NO'}",
              f"load average at end: {loadavg()}")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
