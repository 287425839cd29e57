"""ONNX Runtime sessions: prefer CUDA when it really works, fall back to CPU without noise.

onnxruntime-gpu lists CUDA and TensorRT as available even on a machine without a GPU; a session
asked for CUDA there silently falls back after printing library errors. So we probe once, with the
logger muted, by opening a real graph and checking which provider the session actually got."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

PROVIDERS = ("auto", "cpu", "cuda")
CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
# More intra-op threads than this only slows down (and thousands hang the process): refuse them.
MAX_THREADS = 4 * (os.cpu_count() or 1)
# onnxruntime's CPU arena. Without it every tensor is a fresh malloc, and the big ones fresh pages: a
# Kodak-size decode took 384 000 page faults, 0.66 s of its 2.3 CPU-s in the kernel, 1.31 s (0.87 s
# with the arena, shrunk). Kept, never shrunk, each session holds its largest run's memory for its
# lifetime (session 7: 16 simultaneous decodes held 1.49 GB after the load was gone; one decode leaves
# 0.53 GB). Shrunk at the end of every run (sessions 7–13), it cost a Kodak decode 0.18 s of page faults
# (1.02 → 0.84 s, session 14). So: arena on, kept while the Model is busy, and handed back once it has
# been idle for a moment (SHRINK_ARENA; runtime/model.py ``Model.release_idle_memory``).
CPU_MEM_ARENA = True
SHRINK_ARENA = True
ARENA_SHRINK_ENTRY = ("memory.enable_memory_arena_shrinkage", "cpu:0")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bool)": np.bool_}


def check_provider(choice: str) -> str:
    if choice not in PROVIDERS:
        raise ValueError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDERS)}")
    return choice


def check_threads(threads: int | None) -> int | None:
    """None (or 0) lets onnxruntime decide; otherwise 1 … MAX_THREADS."""
    if threads is None or threads == 0:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} (4 × this machine's CPUs), "
                         f"got {threads!r}")
    return threads


def env_threads() -> int | None:
    """$HF_THREADS, checked like an explicit ``threads``."""
    raw = os.environ.get("HF_THREADS", "").strip()
    if not raw:
        return None
    try:
        return check_threads(int(raw))
    except ValueError:
        raise ValueError(f"HF_THREADS={raw!r}: must be an integer from 1 to {MAX_THREADS}") from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def cuda_works(probe_graph: str) -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(probe_graph, sess_options=opts, providers=CUDA)
        return sess.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(3)


def providers_for(choice: str, probe_graph: Path) -> list[str]:
    if check_provider(choice) == "cpu":
        return CPU
    works = cuda_works(str(probe_graph))
    if choice == "cuda" and not works:
        raise RuntimeError("--provider cuda: onnxruntime cannot use a GPU on this machine")
    return CUDA if works else CPU


def open_session(path: Path, providers: list[str], threads: int | None = None,
                 optimise: bool = True, int8_kernels: bool = False, profile: bool = False) -> ort.InferenceSession:
    """``threads`` (or $HF_THREADS) caps intra-op threads; 0/None lets onnxruntime decide.
    ``profile``: onnxruntime records every node's time (``end_profiling``; benchmarks/graph_profile.py).
    ``int8_kernels``: the graph is an int8 variant, whose Q/DQ pairs onnxruntime fuses into int8
    kernels. In any other graph a DequantizeLinear only unpacks weights stored as int8 (the
    predictor's, export/int8_weights.py); onnxruntime then folds it into a float constant once, when
    the session opens, instead of at every run (6 predictor tiles: 65 → 54 ms, as fast as fp16 weights)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_profiling = profile
    # Memory patterns pre-plan one block per input shape; measured on the VQ decoder (one 320² tile)
    # they raise peak RSS from 180 to 280 MB for no speed gain on CPU.
    opts.enable_mem_pattern = False
    opts.enable_cpu_mem_arena = CPU_MEM_ARENA
    # onnxruntime's intra-op threads spin after each parallel section, waiting for more work. A decode runs
    # five graphs, each its own session with its own threads, one after another on two cores: the threads
    # of the graph that just finished kept spinning while the next graph ran, and took its cores (measured
    # on 8 val images, 2 threads: decode 0.31 → 0.20 s, encode 0.15 → 0.10 s per image without spinning).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not int8_kernels:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    n = check_threads(threads) if threads is not None else env_threads()
    if n:
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def run_options(shrink: bool = False) -> ort.RunOptions:
    """Options for an ``InferenceSession.run``; ``shrink``: the session's CPU arena hands its free
    regions back when the run ends (onnxruntime has no other way to ask for it)."""
    opts = ort.RunOptions()
    opts.log_severity_level = 3
    if shrink:
        opts.add_run_config_entry(*ARENA_SHRINK_ENTRY)
    return opts


def shrink_arena(session: Any) -> bool:
    """One run of ``session`` on a minimal input with the arena-shrink option: onnxruntime offers no
    other way to hand an arena's free regions back. False where the arena is off or the run fails
    (the caller may be a timer thread, where raising would only print)."""
    if not (CPU_MEM_ARENA and SHRINK_ARENA):
        return False
    # symbolic dimensions: batch 1, spatial 2 (the fusion halves its input)
    minimal = {i.name: np.zeros([d if isinstance(d, int) else (1 if k == 0 else 2) for k, d in enumerate(i.shape)],
                                _ORT_TYPES.get(i.type, np.float32))
               for i in session.get_inputs()}
    try:
        session.run(None, minimal, run_options(shrink=True))
    except Exception:  # noqa: BLE001
        return False
    return True
