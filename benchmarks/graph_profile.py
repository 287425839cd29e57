"""Where a decode graph spends its time, operator by operator (onnxruntime's own profiler).

    python -m benchmarks.graph_profile [--model DIR] [--graphs pixel_tail,cont_reconstruct,fusion]
                                       [--window 27] [--threads 1] [--runs 4] [--top 8]

Each graph runs as the runtime runs it on the CPU (its int8 variant where the model has one, one thread as a
lane of a large decode uses) on one window of random inputs of the size a large decode hands it: ``--window``
tokens per side plus the pass's margin. Prints, per graph, the mean run time, the share of each operator type
and the slowest nodes with their output shapes. Why: the multiply-adds do not say where the time goes. In
session 30 this showed onnxruntime's ``ConvTranspose`` (no int8 kernel, ≈ 30 GMAC/s) taking 30 % of the
continuous picture's graph for 13 % of its work, and the fusion's full-resolution output convolutions 45 % of
its graph: the export rewrites of models/layers.py came from here."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import numpy as np

from hybridflow.runtime.model import Model
from hybridflow.runtime.session import CPU, open_session

GRAPHS = ("pixel_head", "pixel_tail", "cont_reconstruct", "fusion")


def window_inputs(model: Model, graph: str, window: int) -> dict[str, np.ndarray]:
    """Random inputs of the sizes a large decode's window of ``window`` tokens per side gives ``graph``."""
    m, geo = model.manifest, model.geometry
    rng = np.random.default_rng(0)
    channels = int(m["guidance_channels"])
    if graph == "pixel_head":
        n = window + 2 * (int(m["tail_margin"]) + int(m["head_margin"]))
        code_dim = model.codebook.shape[1]
        return {"codes": rng.standard_normal((1, code_dim, n, n)), "guidance": rng.standard_normal((1, channels, n, n))}
    if graph == "pixel_tail":
        n = (window + 2 * int(m["tail_margin"])) * int(m["head_cells"])
        head = model.session("pixel_head").get_outputs()[0].shape[1]
        return {"features": rng.standard_normal((1, head, n, n))}
    if graph == "cont_reconstruct":
        n = window + 2 * int(m["reconstruct_margin"])
        return {"guidance": rng.standard_normal((1, channels, n, n))}
    if graph == "fusion":
        n = (window + 2 * int(m["fusion_margin"])) * geo.token_pixels
        return {k: rng.random((1, 3, n, n)) for k in ("pixels", "continuous")}
    raise ValueError(f"no window inputs for {graph!r}: choose from {', '.join(GRAPHS)}")


def profile(path: Path, int8: bool, inputs: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, Any]:
    """Per operator type and per node: mean kernel microseconds over ``runs`` (after one warm-up run)."""
    feed = {k: v.astype(np.float32) for k, v in inputs.items()}
    sess = open_session(path, CPU, threads=threads, int8_kernels=int8, profile=True)  # the runtime's options
    for _ in range(runs + 1):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    shapes: dict[str, tuple[str, str]] = {}
    seen: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        seen[name] += 1
        if seen[name] == 1:
            continue  # the warm-up run
        op = e["args"]["op_name"]
        by_op[op] += e["dur"] / runs
        by_node[name] += e["dur"] / runs
        shapes[name] = (op, str(e["args"].get("output_type_shape", ""))[:60])
    return {"total_ms": sum(by_op.values()) / 1000, "by_op": by_op, "by_node": by_node, "shapes": shapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--window", type=int, default=27, help="tokens per side (a lane's window of the pixel tail)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--top", type=int, default=8, help="slowest nodes listed per graph")
    args = ap.parse_args()
    model = Model.load(args.model, provider="cpu")
    for graph in args.graphs.split(","):
        variant = f"{graph}_int8"
        int8 = variant in model.manifest["graphs"]
        path = model.directory / model.manifest["graphs"][variant if int8 else graph]["file"]
        r = profile(path, int8, window_inputs(model, graph, args.window), args.threads, args.runs)
        total = sum(r["by_op"].values())
        print(f"\n{graph} ({'int8' if int8 else 'fp32'}, {path.name}): {r['total_ms']:.1f} ms per run")
        print("  " + ", ".join(f"{op} {100 * t / total:.0f} %" for op, t in r["by_op"].most_common(8)))
        for name, t in r["by_node"].most_common(args.top):
            op, shape = r["shapes"][name]
            print(f"  {t / 1000:7.1f} ms  {op:20s} {name[:56]:56s} {shape}")


if __name__ == "__main__":
    main()
