"""A model directory as the runtime sees it: ``manifest.json`` + ONNX graphs + integer hyper synthesis.

The manifest is written by ``hf-export`` (see ``export/manifest.py``); its keys are listed in
FORMAT.md. Sessions are opened lazily, so a CLI call that only needs some graphs opens only those."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .complexity import ComplexityModel
from .entropy import EntropyTables
from .fixedpoint import IntegerContext, IntegerHyperSynthesis
from .rates import RatePoint, from_manifest
from .session import (
    CPU,
    check_provider,
    check_threads,
    env_threads,
    open_session,
    providers_for,
    run_options,
    shrink_arena,
    usable_cpus,
)
from .tiling import Geometry

PRECISIONS = ("auto", "fp32", "int8")  # auto: a graph's int8 variant (see below) on the CPU provider
INT8_SUFFIX = "_int8"
# 2: cont_analysis → y only, hyper_analysis y → z; 3: the decoders read code vectors (``codebook``), the
# predictor outputs them; 4: the pixel decoder as pixel_head + pixel_tail (a runtime that knew only
# ``pixel_decoder`` would have drawn hybrid streams without the correction network: a wrong picture, no error)
# 5: the continuous latent may be coded slice by slice through a channel context (``channel_context``; a
# runtime that ignored it would derive other scales and decode garbage)
MODEL_FORMAT_VERSION = 5
FORMAT_WITHOUT_CONTEXT = 4  # what hf-export writes for a model without a context: older runtimes read it
# what hf-export writes, and the ones before (4: no context; 3: one pixel_decoder graph)
READABLE_MODEL_FORMATS = (3, 4, 5)
DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"
# Graph runs at once per Model, whatever the number of calling threads: each run holds its activations,
# so memory is bounded by these caps, not by the callers (benchmarks/concurrency.py, RESULTS.md).
MAX_CONCURRENT_RUNS = os.cpu_count() or 1
# The window decoders work at full resolution: one 768-px window of the shipped pixel decoder holds
# ~0.4 GB, every other graph a few tens of MB (one tile, or latents at 1/16 resolution) — except the
# continuous reconstruction of a model with a learned up-sampling, which also draws full-resolution
# windows. Two windows at once took 16 simultaneous Kodak-size decodes to 1.13 GB for 5 % more
# throughput on 2 cores; one at a time (the small graphs of other calls still run beside it) they
# peak at 0.68 GB.
WINDOW_GRAPHS = ("pixel_decoder", "pixel_head", "pixel_tail", "vq_decoder", "cont_reconstruct", "fusion")
MAX_CONCURRENT_WINDOWS = 1
# Windows of one large picture decoded at once (``Model.lanes``), each on 1/LANES of the threads and half
# the area of a window decoded alone, so the same memory. onnxruntime's convolutions use one thread
# better than two (the int8 pixel tail: 61 % of one core's nominal peak, 46 % of two cores'): two tail
# windows at once on one thread each ran 1.28–1.38× faster than one window on two (session 17).
LANES = 2
_HEAD_TAIL_FIELDS = ("head_margin", "tail_margin", "head_cells")  # a pixel decoder as head and tail graphs
_INT_FIELDS = ("tile", "token_pixels", "n_codes", "downscale", "latent_stride", "hyper_stride", "hyper_channels",
               "guidance_channels")


class ModelError(ValueError):
    """The model directory is unusable (message names the file and why)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


@cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# malloc_trim walks the whole heap (≈ 2–3 ms here): run after every graph run it was ≈ 20 ms of a 0.26 s
# Kodak encode; shrinking onnxruntime's arenas after every run cost a Kodak decode 0.18 s of page faults.
# So an idle process gives memory back once it has stayed idle this long, off the request path.
TRIM_AFTER_IDLE_S = 0.5

# Every Model's idle-release timer, pending or running. A timer thread is a daemon (an idle process must
# not wait for it to exit), so without this hook the interpreter could finalise onnxruntime while that thread
# is inside a run: "terminate called without an active exception", exit status 134 after the work was done
# (seen once at the end of a benchmark run). atexit hooks run after non-daemon threads are joined and
# before finalisation: pending timers are cancelled (no delay), a running one is waited for (a few ms).
_IDLE_TIMERS: set[threading.Timer] = set()
_IDLE_TIMERS_LOCK = threading.Lock()


def _start_idle_timer(release: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(TRIM_AFTER_IDLE_S, release)
    timer.daemon = True
    with _IDLE_TIMERS_LOCK:
        _IDLE_TIMERS.difference_update([t for t in _IDLE_TIMERS if t.finished.is_set() and not t.is_alive()])
        _IDLE_TIMERS.add(timer)
    timer.start()
    return timer


@atexit.register
def _finish_idle_releases() -> None:
    with _IDLE_TIMERS_LOCK:
        timers = list(_IDLE_TIMERS)
    for timer in timers:
        timer.cancel()
        if timer.is_alive():
            timer.join()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise; no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class Model:
    directory: Path
    manifest: dict[str, Any]
    provider: str = "auto"
    threads: int | None = None
    optimise: bool = True
    # which variant runs where the manifest lists "<graph>_int8" (written by hf-export --quantize int8)
    precision: str = field(default_factory=lambda: os.environ.get("HF_PRECISION", "auto"))
    max_concurrent_runs: int = MAX_CONCURRENT_RUNS  # 0: no cap (graphs then run on the callers' threads)
    max_concurrent_windows: int = MAX_CONCURRENT_WINDOWS  # of those, WINDOW_GRAPHS runs; 0: no own cap
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _busy: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _running: int = field(default=0, repr=False)
    _windows: int = field(default=0, repr=False)
    _threads: dict[bool, tuple[tuple[int, bool, int], ThreadPoolExecutor]] = field(default_factory=dict, repr=False)
    _trim: threading.Timer | None = field(default=None, repr=False)
    _used: set[str] = field(default_factory=set, repr=False)  # graphs run since memory was last released
    _owner: Model | None = field(default=None, repr=False)  # of a ``lanes`` sibling: the Model it serves
    _lanes: Model | None = field(default=None, repr=False)

    @classmethod
    def load(cls, directory: Path | None = None, provider: str = "auto", threads: int | None = None,
             optimise: bool = True) -> Model:
        provider, threads = check_provider(provider), check_threads(threads)
        directory = Path(directory) if directory is not None else DEFAULT_MODEL_DIR
        path = directory / "manifest.json"
        if not path.is_file():
            raise ModelError(f"no model at {directory} (manifest.json missing)")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path}: invalid JSON ({_one_line(e)})") from None
        except OSError as e:
            raise ModelError(f"{path}: cannot read ({e.strerror})") from None
        if not isinstance(manifest, dict):
            raise ModelError(f"{path}: not a model manifest (expected a JSON object)")
        if manifest.get("format_version") not in READABLE_MODEL_FORMATS:
            raise ModelError(f"{path}: model format {manifest.get('format_version')} is not supported "
                             f"(this runtime reads {' and '.join(map(str, READABLE_MODEL_FORMATS))})")
        model = cls(directory, manifest, provider, threads, optimise)
        model._validate(path)
        return model

    def _validate(self, path: Path) -> None:
        """Fail at load time with the file's name, not with a KeyError in the middle of a decode."""
        try:
            self.model_id, self.name, self.complexity, self.geometry  # noqa: B018
            for key in _INT_FIELDS + (_HEAD_TAIL_FIELDS if self.has("pixel_head") else ()):
                if int(self.manifest[key]) <= 0:
                    raise ValueError(f"{key} must be positive")
            files = {name: self.directory / g["file"] for name, g in self.manifest["graphs"].items()}
            self._check_tables(self.tables)
            self._rates  # noqa: B018
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"{path}: invalid manifest ({_one_line(e)})") from None
        for name, file in files.items():
            if not file.is_file():
                raise ModelError(f"{file}: graph {name!r} of the manifest is missing")
        if "hyper_synthesis" in self.manifest:
            self.hyper  # noqa: B018
        self.context  # noqa: B018
        self.codebook  # noqa: B018

    def _check_tables(self, t: EntropyTables) -> None:
        n_codes = int(self.manifest["n_codes"])
        if t.z_pmf.ndim != 2 or t.z_pmf.shape[1] % 2 == 0 or not (t.z_pmf > 0).all():
            raise ValueError("entropy.z_pmf must be (channels, 2R+1) positive")
        if t.index_prior.shape != (n_codes,) or not (t.index_prior > 0).all():
            raise ValueError(f"entropy.index_prior must hold {n_codes} positive values")
        if t.scale_table.ndim != 1 or not (t.scale_table > 0).all() or not (np.diff(t.scale_table) > 0).all():
            raise ValueError("entropy.scale_table must be positive and ascending")
        if t.y_radius <= 0:
            raise ValueError("entropy.y_radius must be positive")

    # --- static parts -------------------------------------------------------------------------
    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.manifest["model_id"])[:4]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.manifest["model_id"][:8])

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    @property
    def has_correction(self) -> bool:
        """A pixel decoder with the correction network: head and tail graphs (exported since session
        17), or one ``pixel_decoder`` graph (before)."""
        return self.has("pixel_head") or self.has("pixel_decoder")

    @property
    def _rates(self) -> tuple[list[RatePoint], int]:
        if "_rate_points" not in self.__dict__:
            self.__dict__["_rate_points"] = from_manifest(self.manifest)
        return self.__dict__["_rate_points"]

    @property
    def rate_points(self) -> int:
        """How many rate points the continuous stream offers (≥ 1), numbered by increasing rate."""
        return len(self._rates[0])

    @property
    def base_rate(self) -> int:
        """The point the networks were trained at (gain 1): what a stream gets when no rate is asked for."""
        return self._rates[1]

    def rate_point(self, k: int) -> RatePoint:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.rate_points:
            raise ValueError(f"rate point {k!r} does not exist: model {self.name} has {self.rate_points} "
                             f"(0…{self.rate_points - 1}, base {self.base_rate})")
        return self._rates[0][k]

    @property
    def tables(self) -> EntropyTables:
        if "_tables" not in self.__dict__:
            e = self.manifest["entropy"]
            self.__dict__["_tables"] = EntropyTables(
                z_pmf=np.asarray(e["z_pmf"], np.float64),
                scale_table=np.asarray(e["scale_table"], np.float64),
                y_radius=int(e["y_radius"]),
                index_prior=np.asarray(e["index_prior"], np.float64),
            )
        return self.__dict__["_tables"]

    @property
    def hyper(self) -> IntegerHyperSynthesis:
        if "_hyper" not in self.__dict__:
            path = self.directory / str(self.manifest["hyper_synthesis"])
            try:
                self.__dict__["_hyper"] = IntegerHyperSynthesis.load(path)
            except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
                raise ModelError(f"{path}: cannot read the integer hyper synthesis ({_one_line(e)})") from None
        return self.__dict__["_hyper"]

    @property
    def context(self) -> IntegerContext | None:
        """The channel-wise context of the continuous latent (runtime/slices.py), or None: a model
        before format 5, or one trained without it (manifest ``channel_context``, an .npz beside it)."""
        if "_context" not in self.__dict__:
            name = self.manifest.get("channel_context")
            context = None
            if name is not None:
                path = self.directory / str(name)
                try:
                    context = IntegerContext.load(path)
                except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
                    raise ModelError(f"{path}: cannot read the channel context ({_one_line(e)})") from None
                if int(self.manifest["latent_channels"]) % context.slices:
                    raise ModelError(f"{path}: {context.slices} context slices do not divide the latent channels")
            self.__dict__["_context"] = context
        return self.__dict__["_context"]

    @property
    def codebook(self) -> np.ndarray:
        """(n_codes, code_dim) float32: the code vector of each index, what the decoders read where an
        index was sent (the predictor hands over codes for the rest)."""
        if "_codebook" not in self.__dict__:
            if not isinstance(self.manifest.get("codebook"), str):
                raise ModelError(f"{self.directory / 'manifest.json'}: invalid manifest (no codebook file named)")
            path = self.directory / self.manifest["codebook"]
            try:
                book = np.load(path, allow_pickle=False)
            except (OSError, EOFError, ValueError) as e:
                raise ModelError(f"{path}: cannot read the codebook ({_one_line(e)})") from None
            if book.dtype != np.float32 or book.ndim != 2 or book.shape[0] != int(self.manifest["n_codes"]) \
                    or not np.isfinite(book).all():
                raise ModelError(f"{path}: the codebook must be finite float32 (n_codes, code_dim), "
                                 f"got {book.dtype} {book.shape}")
            self.__dict__["_codebook"] = book
        return self.__dict__["_codebook"]

    def codes(self, indices: np.ndarray) -> np.ndarray:
        """Indices (…, H, W) → their code vectors (…, code_dim, H, W), the decoders' input layout."""
        return np.moveaxis(self.codebook[indices], -1, -3)

    @property
    def geometry(self) -> Geometry:
        if "_geometry" not in self.__dict__:
            self.__dict__["_geometry"] = Geometry.from_manifest(self.manifest)
        return self.__dict__["_geometry"]

    @property
    def complexity(self) -> ComplexityModel:
        return ComplexityModel(**self.manifest["complexity"])

    # --- graphs -------------------------------------------------------------------------------
    def session(self, graph: str) -> Any:
        with self._lock:
            if graph not in self._sessions:
                if not self.has(graph):
                    raise ModelError(f"model {self.name} has no {graph!r} graph")
                path = self.directory / self.manifest["graphs"][graph]["file"]
                providers = providers_for(self.provider, path)
                variant = self._variant(graph, providers)
                path = variant or path
                try:
                    self._sessions[graph] = open_session(path, providers, self.threads, self.optimise,
                                                         int8_kernels=variant is not None)
                except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, NoSuchFile, Fail …)
                    raise ModelError(f"{path}: cannot load graph {graph!r} ({_one_line(e)})") from None
            return self._sessions[graph]

    def open(self, graphs: tuple[str, ...] | None = None) -> None:
        """Open these graphs' sessions now (``None``: every graph of the manifest), not at their first
        run. A long-lived worker (a Ray actor) loads its model before its first image, so the first
        image's time is the image's alone and a model that cannot load fails before any file.
        Graphs the model lacks are skipped; int8 variants open through the graph they stand for."""
        entries = self.manifest["graphs"]
        for graph in entries if graphs is None else graphs:
            if graph in entries and "variant_of" not in entries[graph]:
                self.session(graph)

    def _variant(self, graph: str, providers: list[str]) -> Path | None:
        """The int8 variant's file, where the manifest lists one and ``precision`` asks for it."""
        if self.precision not in PRECISIONS:
            raise ModelError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        entry = self.manifest["graphs"].get(graph + INT8_SUFFIX)
        if entry is None or entry.get("variant_of") != graph or self.precision == "fp32":
            return None
        return self.directory / entry["file"] if self.precision == "int8" or providers == CPU else None

    def lanes(self) -> Model | None:
        """The sibling that decodes the windows of a large picture ``LANES`` at a time: the same graphs in
        sessions of its own with 1/LANES of the threads, and caps of its own: LANES times this Model's
        window cap, for windows of half the area (the codec's lane windows), so one large picture's pass
        takes the memory of one window as before. (Its caps and this Model's are not shared: a process
        decoding a large picture and a one-window one at once may hold two windows' worth. Sharing them
        measured 8000×6000 at 1.02 GB peak instead of 0.90: not understood yet.) None where lanes do
        not pay: fewer than two threads, or the graphs run on a GPU."""
        threads = self.threads or env_threads() or usable_cpus()
        probe = self.directory / next(iter(self.manifest["graphs"].values()))["file"]
        if self._owner is not None or threads < LANES or providers_for(self.provider, probe) != CPU:
            return None
        with self._lock:
            if self._lanes is None:
                self._lanes = Model(self.directory, self.manifest, self.provider, threads // LANES, self.optimise,
                                    self.precision, self.max_concurrent_runs, self.max_concurrent_windows * LANES,
                                    _owner=self)
            return self._lanes

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        session = self.session(graph)
        window = graph in WINDOW_GRAPHS
        with self._slot(window):
            threads = self._graph_threads(window)
            if threads is None:
                return self._run(session, graph, inputs)
            return threads.submit(self._run, session, graph, inputs).result()

    def _run(self, session: Any, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self._used.add(graph)
        try:
            return session.run(None, inputs, run_options())
        except Exception as e:  # a graph that does not fit its manifest fails here, in onnxruntime's types
            raise ModelError(f"graph {graph!r} of model {self.name} failed ({_one_line(e)})") from None

    def _graph_threads(self, window: bool) -> ThreadPoolExecutor | None:
        """The Model's own threads, on which graph runs happen: ``max_concurrent_windows`` for the
        window decoders, ``max_concurrent_runs`` for the rest. Why not the callers' threads: glibc
        gives every thread that allocates a heap arena of its own, and what a run frees on one thread
        is not reused by a run on another until the process is trimmed, so peak memory grew with the
        number of calling threads even with one run at a time."""
        size = (self.max_concurrent_windows or self.max_concurrent_runs) if window else self.max_concurrent_runs
        if not size:
            return None
        key = (os.getpid(), window, size)
        with self._lock:
            pool = self._threads.get(window)
            if pool is None or pool[0] != key:  # first run, a new cap, or a forked child (no threads)
                if pool is not None and pool[0][0] == os.getpid():
                    pool[1].shutdown(wait=False)
                name = "hf-window" if window else "hf-graph"
                pool = self._threads[window] = (key, ThreadPoolExecutor(size, thread_name_prefix=name))
            return pool[1]

    def release_idle_memory(self) -> list[str]:
        """Give memory back to the OS once the Model is idle (the ``_slot`` timer calls this): every
        session that ran since the last call shrinks its onnxruntime arena — by one run on a minimal
        input with the shrink option, the only way onnxruntime offers — and then the heap is trimmed.
        Returns the graphs shrunk. Skipped while a run is in flight: that run's end sets a new timer."""
        with self._busy:
            if self._running:
                return []
        with self._lock:
            used, self._used = sorted(self._used), set()
            sessions = [(g, self._sessions[g]) for g in used if g in self._sessions]
        shrunk = [graph for graph, session in sessions if shrink_arena(session)]
        release_free_memory()
        return shrunk

    def shrink(self, graph: str) -> bool:
        """Hand ``graph``'s onnxruntime arena back now, not when the Model is next idle. The codec calls
        this after a pass over several windows of a large picture, so that one pass's arena (hundreds of
        MB for the pixel decoder) is not kept through the next and peak memory stays one pass's; a
        picture of one window keeps its arenas for the next call until the Model is idle."""
        with self._lock:
            session = self._sessions.get(graph)
            self._used.discard(graph)
        return session is not None and shrink_arena(session)

    @contextmanager
    def _slot(self, window: bool) -> Iterator[None]:
        """At most ``max_concurrent_runs`` graph runs at once, of which at most
        ``max_concurrent_windows`` window decoders; when the last run ends, freed memory goes back
        to the OS (``TRIM_AFTER_IDLE_S`` later, unless another run ends first) so an idle process
        shrinks after a burst of requests."""
        with self._busy:
            while ((self.max_concurrent_runs and self._running >= self.max_concurrent_runs)
                   or (window and self.max_concurrent_windows and self._windows >= self.max_concurrent_windows)):
                self._busy.wait()
            self._running += 1
            self._windows += window
        try:
            yield
        finally:
            with self._busy:
                self._running -= 1
                self._windows -= window
                self._busy.notify_all()  # waiters wait for different things: wake them all to re-check
                if self._running == 0:
                    if self._trim is not None:
                        self._trim.cancel()
                    self._trim = _start_idle_timer(self.release_idle_memory)
