"""Compress and evaluate image archives on a Ray cluster (``hf-run compress|eval --engine ray``).

Why Ray Data and no scheduler of our own: ``map_batches`` with a callable class gives one stateful
actor per worker (the model is loaded once per actor), backpressure, and actor/task retries when a
worker process or a node dies. This module only decides what happens to each file, and how a rerun
stays cheap and correct:

- The outputs are the truth. Each is written atomically (temporary name, then rename), so an output
  that exists is complete. A run lists DST first and skips what is there; a worker checks again
  before compressing, so a batch retried after its actor died does not redo what the dead actor had
  finished. ``force=True`` redoes everything.
- Every input gets one row in a per-run Parquet manifest, ``DST/.manifests/run-<time>-<id>.parquet``:
  path, output, bytes, bpp, seconds, started (UTC), status (``ok`` | ``skipped`` | ``failed``), error,
  worker. A
  bad image is a ``failed`` row, never an exception that stops the run; the next run tries it again.
- Fault tolerance is stated in ``Retries``, not left to Ray Data's defaults (which restart a dead
  actor forever and retry its tasks forever).

SRC and DST are local paths or filesystem URIs: whatever ``pyarrow.fs`` understands (``file://``,
``s3://``, ``gs://``, ``hdfs://``), else whatever fsspec does. On a cluster every node must reach
them and must have ``hybridflow[scale]`` installed; ``model`` must be a path that exists on every
node (the default model ships inside the package). Ray, pyarrow and fsspec come with the ``[scale]``
extra and are imported only when this module is used.

Outputs are byte-identical to ``hf-run compress``: the same image decoder and the same ``Codec``.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import socket
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .codec import ENCODER_GRAPHS
from .imageio import READABLE, SUFFIX, decode_image, write_bytes_atomic
from .ratecontrol import SizeRequest

MAX_TASKS = 10_000
MANIFEST_DIR = ".manifests"  # under DST; hidden, so listings of inputs and outputs never see it

MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()), ("output", pa.string()), ("bytes", pa.int64()), ("bpp", pa.float64()),
    ("seconds", pa.float64()), ("started", pa.timestamp("us", tz="UTC")), ("status", pa.string()),
    ("error", pa.string()), ("worker", pa.string()),
])
EVAL_SCHEMA = pa.schema([
    ("path", pa.string()), ("width", pa.int64()), ("height", pa.int64()), ("bytes", pa.int64()),
    ("bpp", pa.float64()), ("psnr", pa.float64()), ("ms_ssim", pa.float64()), ("sharpness", pa.float64()),
    ("sharpness_half", pa.float64()), ("lpips", pa.float64()), ("encode_s", pa.float64()),
    ("decode_s", pa.float64()),
    ("status", pa.string()), ("error", pa.string()), ("worker", pa.string()),
])


@dataclass(frozen=True)
class Retries:
    """What Ray may retry. Files' own errors (a corrupt image, a write that fails) are caught and
    recorded per file, so Ray retries only what it alone can see: a worker process or node dying.

    ``max_restarts``: how often one worker actor is recreated after its process died.
    ``max_task_retries``: how often a batch is resubmitted after the actor running it died.
    ``retry_exceptions``: Python exceptions from the batch function that Ray retries; ``False``,
    since a file's exception never leaves the batch function (it becomes a ``failed`` row).
    """

    max_restarts: int = 3
    max_task_retries: int = 3
    retry_exceptions: bool = False


@dataclass(frozen=True)
class Engine:
    """Where and how wide to run.

    ``address``: ``None`` starts a local Ray on this machine; ``"auto"`` joins the cluster this
    machine was added to with ``ray start``; ``"ray://head:10001"`` connects a remote client.
    ``workers``: actors, each holding one model; ``None`` = the cluster's CPUs ÷ ``threads_per_worker``.
    ``threads_per_worker``: onnxruntime threads per graph in each actor (and CPUs reserved for it).
    ``batch_size``: files per task; 1 balances best, larger amortises per-task overhead on huge archives.
    """

    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    batch_size: int = 1
    retries: Retries = Retries()


@dataclass
class RunSummary:
    manifest: str  # URI or path of this run's Parquet manifest
    counts: dict[str, int]  # status → files
    seconds: float

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


@dataclass
class EvalSummary:
    rows: pa.Table  # one row per image (EVAL_SCHEMA)
    means: dict[str, float]  # over the images that succeeded
    seconds: float

    @property
    def failed(self) -> int:
        return sum(s != "ok" for s in self.rows.column("status").to_pylist())


# --------------------------------------------------------------------------------- filesystems
def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A local path or a URI → (filesystem, path inside it). pyarrow first (it is what Ray Data
    uses), then fsspec for schemes pyarrow lacks."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _root_uri(uri: str) -> str:
    """What the workers open: local paths made absolute (a worker's working directory differs)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _join(root: str, rel: str) -> str:
    return posixpath.join(root, rel) if rel else root


def _listing(fs: pafs.FileSystem, root: str, must_exist: bool) -> Iterator[tuple[str, pafs.FileInfo]]:
    """(relative path, info) of every visible file below ``root``; hidden files and folders (our
    temporary files and manifests among them) are left out."""
    kind = fs.get_file_info(root).type
    if kind != pafs.FileType.Directory:
        if must_exist:
            raise FileNotFoundError(f"{root}: not a directory (--engine ray takes folders)")
        return
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, root)
        if not any(part.startswith(".") for part in rel.split("/")):
            yield rel, info


def output_name(rel: str) -> str:
    """``sub/photo.jpg`` → ``sub/photo.hfc``: the local CLI's naming (stem + suffix), keeping folders."""
    return posixpath.join(posixpath.dirname(rel), posixpath.splitext(posixpath.basename(rel))[0] + SUFFIX)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Readers never see a partial file. Local: the CLI's temporary-file-and-rename. Elsewhere: a
    hidden temporary object, then ``move`` (a rename on HDFS; object stores' puts are whole anyway)."""
    parent = posixpath.dirname(path)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        write_bytes_atomic(Path(path), data)
        return
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.part")
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------------- workers
def _now() -> datetime.datetime:
    """When a file's work began (the manifest's ``started``): with ``seconds`` it places every file on
    one clock, so a run's steady rate can be told apart from its start-up (benchmarks/scale.py)."""
    return datetime.datetime.now(datetime.timezone.utc)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {text}"


def _opencv_threads(threads: int) -> None:
    """The actor reserved ``threads`` CPUs and onnxruntime runs that many intra-op threads (and one
    inter-op thread, session.open_session); OpenCV's resizes and colour conversions would otherwise
    spread over every core of the node, on top of the other workers."""
    import cv2

    cv2.setNumThreads(threads)


class _Worker:
    """State of one Ray actor: the model, loaded once, and the two filesystems."""

    GRAPHS: tuple[str, ...] | None = None  # what the model opens before the first file (None: all)

    def __init__(self, src: str, dst: str | None, model: str | None, provider: str, threads: int,
                 mask: str, stream: str, size: SizeRequest = SizeRequest(), force: bool = False,
                 rate: int | None = None) -> None:
        from .codec import Codec

        self.codec = Codec.load(model, provider=provider, threads=threads)
        self.codec.model.open(self.GRAPHS)  # the model loads here, once, not in the first file's seconds
        _opencv_threads(threads)
        self.src_uri = src
        self.src_fs, self.src = open_fs(src)
        self.dst_fs, self.dst = open_fs(dst) if dst is not None else (None, "")
        self.mask, self.stream, self.force = mask, stream, force
        self.options = {"mask": mask, "stream": stream, "rate": rate, **size.kwargs()}  # what Codec.compress is given
        self.tag = f"{socket.gethostname()}:{os.getpid()}"

    def read(self, rel: str) -> np.ndarray:
        path = _join(self.src, rel)
        with self.src_fs.open_input_file(path) as f:
            data = f.read()
        return decode_image(data, path)[0]


class _Compressor(_Worker):
    GRAPHS = ENCODER_GRAPHS

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self.one(str(rel), str(out)) for rel, out in zip(batch["rel"], batch["out"])]
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

    def one(self, rel: str, out: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        dst = _join(self.dst, out)
        row: dict[str, Any] = {"path": _join(self.src, rel), "output": dst, "started": _now(), "status": "ok",
                               "error": "", "worker": self.tag}
        try:
            if not self.force and self.dst_fs.get_file_info(dst).type == pafs.FileType.File:
                # finished by an earlier attempt of this batch, whose actor then died
                with self.dst_fs.open_input_file(dst) as f:
                    info = self.codec.info(f.read())
                row.update(status="skipped", bytes=info.bytes, bpp=info.bpp)
            else:
                rgb = self.read(rel)
                data = self.codec.compress(rgb, **self.options)
                write_atomic(self.dst_fs, dst, data)
                row.update(bytes=len(data), bpp=8 * len(data) / (rgb.shape[0] * rgb.shape[1]))
        except Exception as e:  # a bad file is a row of the manifest, never the end of the run
            row.update(status="failed", error=_one_line(e))
        row["seconds"] = time.perf_counter() - t0
        return row


class _Evaluator(_Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from . import metrics

        super().__init__(*args, **kwargs)
        self.lpips = metrics.lpips_alex()  # LPIPS-Alex where torch and its weights are on the worker

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self.one(str(root), str(rel)) for root, rel in zip(batch["root"], batch["rel"])]
        return pa.Table.from_pylist(rows, schema=EVAL_SCHEMA)

    def one(self, root: str, rel: str) -> dict[str, Any]:
        from . import metrics

        if root != self.src_uri:  # eval takes several roots
            self.src_uri = root
            self.src_fs, self.src = open_fs(root)
        row: dict[str, Any] = {"path": _join(self.src, rel), "status": "ok", "error": "", "worker": self.tag}
        try:
            rgb = self.read(rel)
            t0 = time.perf_counter()
            data = self.codec.compress(rgb, **self.options)
            t1 = time.perf_counter()
            rec = self.codec.decompress(data)
            t2 = time.perf_counter()
            row.update(width=rgb.shape[1], height=rgb.shape[0], bytes=len(data),
                       **metrics.quality(rgb, len(data), rec, self.lpips), encode_s=t1 - t0, decode_s=t2 - t1)
        except Exception as e:  # a bad file is a row, never the end of the run
            row.update(status="failed", error=_one_line(e))
        return row


# ------------------------------------------------------------------------------------ driver
def start_local(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a Ray on this machine, as ``--engine ray`` does without ``--address``: no dashboard,
    and workers at this process's own priority. Ray's default makes its workers 15 steps nicer than
    the process that started it, so on a shared machine ``hf-run compress --engine ray`` yielded to
    every other job (and its actors to their own driver) where ``hf-run compress`` does not."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, _system_config={"worker_niceness": 0}, **kwargs)


def _connect(engine: Engine) -> int:
    """Start or join Ray; returns the number of workers to run."""
    import ray

    if engine.threads_per_worker < 1 or (engine.workers is not None and engine.workers < 1):
        raise ValueError("--workers and --threads-per-worker must be at least 1")
    if not ray.is_initialized():
        if engine.address:
            ray.init(address=engine.address)
        else:
            start_local()
    if engine.workers is not None:
        return engine.workers
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // engine.threads_per_worker)


def _run(items: list[dict[str, str]], worker: type, kwargs: dict[str, Any], engine: Engine) -> Iterator[pa.Table]:
    """The one Ray Data pipeline: files → actors (one model each) → result tables, streamed back."""
    import ray.data

    workers = _connect(engine)
    retries = engine.retries
    # one task per batch, up to MAX_TASKS (then several batches per task): tasks balance the load
    # and bound what a retry redoes, but each costs the driver some bookkeeping
    blocks = max(1, min(-(-len(items) // engine.batch_size), MAX_TASKS))
    workers = min(workers, blocks)  # an actor without a batch would only load a model
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options through map_batches' **kwargs but names no
        # replacement for max_restarts / max_task_retries; this is still the way to set them.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = ds.map_batches(worker, fn_constructor_kwargs={**kwargs, "threads": engine.threads_per_worker},
                            batch_size=engine.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=engine.threads_per_worker,
                            max_restarts=retries.max_restarts, max_task_retries=retries.max_task_retries)
    ctx = ds.context  # this dataset's own copy: the caller's global Ray Data settings stay untouched
    ctx.actor_task_retry_on_errors = retries.retry_exceptions
    ctx.max_errored_blocks = 0  # files' errors are rows; anything that escapes is a bug: stop
    ctx.enable_progress_bars = sys.stderr.isatty()
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def plan_compress(src: str, dst: str, force: bool = False) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Which files need work: (items for the workers, manifest rows decided here — outputs already
    there, and inputs whose output name another input already takes)."""
    src_fs, src_root = open_fs(src)
    dst_fs, dst_root = open_fs(dst)
    done = {rel: info.size for rel, info in _listing(dst_fs, dst_root, must_exist=False)}
    todo: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    taken: dict[str, str] = {}
    for rel, _ in sorted(_listing(src_fs, src_root, must_exist=True)):
        if posixpath.splitext(rel)[1].lower() not in READABLE:
            continue
        out = output_name(rel)
        row = {"path": _join(src_root, rel), "output": _join(dst_root, out), "seconds": 0.0, "started": _now(),
               "error": "", "worker": "driver"}
        if out in taken:
            rows.append({**row, "status": "failed", "error": f"output name already taken by {taken[out]}"})
        elif out in done and not force:
            rows.append({**row, "status": "skipped", "bytes": done[out]})
        else:
            todo.append({"rel": rel, "out": out})
        taken.setdefault(out, rel)
    return todo, rows


def compress_archive(src: str, dst: str, *, mask: str = "auto", stream: str = "hybrid", rate: int | None = None,
                     size: SizeRequest = SizeRequest(), model: str | Path | None = None, provider: str = "auto",
                     force: bool = False, engine: Engine = Engine(), manifest: str | None = None) -> RunSummary:
    """Compress every image below ``src`` into ``dst`` (same relative folders, ``.hfc`` names) on
    Ray. Safe to interrupt and rerun: finished outputs are skipped. Returns the counts and where
    the manifest is; a failed file shows up there and in ``counts["failed"]``, not as an exception."""
    t0 = time.perf_counter()
    src, dst = _root_uri(src), _root_uri(dst)
    todo, decided = plan_compress(src, dst, force)
    dst_fs, dst_root = open_fs(dst)
    dst_fs.create_dir(dst_root, recursive=True)
    if manifest is None:
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        manifest = _join(dst, f"{MANIFEST_DIR}/run-{run_id}.parquet")
    size.check(mask)  # a bad request fails here, once, not as a failed row per file
    kwargs = {"src": src, "dst": dst, "model": _model_arg(model), "provider": provider, "mask": mask,
              "stream": stream, "size": size, "force": force, "rate": rate}
    counts: Counter[str] = Counter()
    with _ManifestWriter(*open_fs(manifest), MANIFEST_SCHEMA) as out:
        if decided:
            out.write(pa.Table.from_pylist(decided, schema=MANIFEST_SCHEMA))
            counts.update(row["status"] for row in decided)
        for table in _run(todo, _Compressor, kwargs, engine) if todo else ():
            out.write(table)
            counts.update(table.column("status").to_pylist())
    return RunSummary(manifest, dict(counts), time.perf_counter() - t0)


def evaluate_archive(sources: str | Iterable[str], *, mask: str = "auto", stream: str = "hybrid",
                     rate: int | None = None, size: SizeRequest = SizeRequest(), model: str | Path | None = None,
                     provider: str = "auto",
                     engine: Engine = Engine()) -> EvalSummary:
    """Round-trip every image below ``sources`` in memory on Ray: per-image bpp (real bytes), PSNR,
    MS-SSIM, sharpness, seconds, and their means over the images that succeeded."""
    t0 = time.perf_counter()
    roots = [_root_uri(s) for s in ([sources] if isinstance(sources, str) else sources)]
    items = [{"root": root, "rel": rel} for root in roots for rel, _ in sorted(_listing(*open_fs(root), True))
             if posixpath.splitext(rel)[1].lower() in READABLE]
    if not items:
        raise FileNotFoundError(f"no images in {', '.join(roots)}")
    size.check(mask)
    tables = list(_run(items, _Evaluator, {"src": roots[0], "dst": None, "model": _model_arg(model),
                                           "provider": provider, "mask": mask, "stream": stream, "size": size,
                                           "rate": rate}, engine))
    rows = pa.concat_tables(tables).sort_by("path")
    ok = rows.filter(pc.equal(rows.column("status"), "ok"))
    keys = ("bpp", "psnr", "ms_ssim", "sharpness", "sharpness_half", "lpips", "encode_s", "decode_s")
    columns = {k: ok.column(k).drop_null().to_numpy() for k in keys}  # lpips is null without torch
    means = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in columns.items()}
    return EvalSummary(rows, means, time.perf_counter() - t0)


def failures(manifest: str) -> list[tuple[str, str]]:
    """(path, error) of the files a run could not compress, read back from its manifest."""
    fs, path = open_fs(manifest)
    table = pq.read_table(path, filesystem=fs, columns=["path", "status", "error"])
    table = table.filter(pc.equal(table.column("status"), "failed"))
    return list(zip(table.column("path").to_pylist(), table.column("error").to_pylist()))


def _model_arg(model: str | Path | None) -> str | None:
    return None if model is None else os.path.abspath(os.fspath(model))


class _ManifestWriter:
    """Parquet rows as they arrive (bounded memory on huge archives), into a hidden temporary file
    that is renamed when the run ends — also when it is interrupted, so a partial run still leaves
    a readable record of what it did."""

    def __init__(self, fs: pafs.FileSystem, path: str, schema: pa.Schema) -> None:
        self.fs, self.path, self.schema = fs, path, schema
        self.tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.part")

    def __enter__(self) -> _ManifestWriter:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        self.stream = self.fs.open_output_stream(self.tmp)
        self.writer = pq.ParquetWriter(self.stream, self.schema)
        return self

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table.cast(self.schema))

    def __exit__(self, *exc: object) -> None:
        self.writer.close()
        self.stream.close()
        self.fs.move(self.tmp, self.path)
