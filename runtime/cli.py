"""``hf-run``: compress, decompress, inspect and evaluate with the HybridFlow runtime.

Errors are one line on stderr and a non-zero exit; inputs are never overwritten; outputs appear
atomically and an existing output needs ``--force``."""

from __future__ import annotations

import csv
import dataclasses
import glob
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import typer.core

from .imageio import READABLE, SUFFIX
from .masking import CHOICES
from .ratecontrol import DEFAULT_MAX_BPP, SizeRequest
from .rates import HELP as RATE_HELP
from .session import MAX_THREADS, PROVIDERS, check_provider, check_threads
from .streams import STREAMS

if TYPE_CHECKING:
    from .scale import Engine

def _plain(text: str) -> str:
    """typer labels every parameter with its Python type (``IN <list[str]>``, usage ``{IN}...``);
    values are named by their metavar alone, as click does."""
    return re.sub(r"\{([A-Z_.]+)\}", r"\1", re.sub(r" <[\w\[\], |.]+>", "", text))


_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH"}


class _PlainCommand(typer.core.TyperCommand):
    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:  # an option's value gets click's metavar (TEXT, INTEGER, PATH) unless it has one
            if isinstance(p, typer.core.TyperOption) and not p.is_flag and p.metavar is None:
                p.metavar = _METAVARS.get(p.bare_type(), p.bare_type().upper())
        return params

    def get_usage(self, ctx: typer.Context) -> str:
        return _plain(super().get_usage(ctx))

    def get_help(self, ctx: typer.Context) -> str:
        return _plain(super().get_help(ctx))


class _PlainGroup(typer.core.TyperGroup):
    def get_help(self, ctx: typer.Context) -> str:
        return _plain(super().get_help(ctx))


# Plain help (rich's boxes cut long choices short); errors are one line of our own (below).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_PlainGroup,
                  rich_markup_mode=None, help="HybridFlow learned image codec (extreme low bitrates).")

ModelOpt = typer.Option(None, "--model", metavar="DIR",
                        help="model directory (default: the model shipped with the package)")
ProviderOpt = typer.Option("auto", "--provider", help=f"onnxruntime provider: {'|'.join(PROVIDERS)}")
ThreadsOpt = typer.Option(None, "--threads", metavar="N",
                          help=f"threads per graph, 1…{MAX_THREADS} (default: onnxruntime decides)")
ForceOpt = typer.Option(False, "--force", "-f", help="overwrite existing outputs (a replaced file keeps its mode)")
MaskOpt = typer.Option("auto", "--mask", metavar="MASK",
                       help=f"which VQ indices to send: {' | '.join(CHOICES)} (auto: per tile, by complexity, "
                            f"and at most {DEFAULT_MAX_BPP} bpp)")
StreamOpt = typer.Option("hybrid", "--stream", metavar="STREAM",
                         help=f"{' | '.join(STREAMS)} (vq, continuous: the single-stream baselines)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _size_option(name: str) -> Any:
    """``--quality``, ``--target-bpp``, ``--max-bytes``: spelled, typed and explained by ``SizeRequest``."""
    f = next(f for f in dataclasses.fields(SizeRequest) if f.name == name)
    return typer.Option(None, _flag(name), metavar=f.metadata["metavar"], help=f.metadata["help"])


QualityOpt, TargetBppOpt, MaxBytesOpt = (_size_option(f.name) for f in dataclasses.fields(SizeRequest))
RateOpt = typer.Option(None, "--rate", metavar="K", help=RATE_HELP)
EngineOpt = typer.Option("local", "--engine", help="local | ray (folders or URIs on a Ray cluster: see README)")
AddressOpt = typer.Option(None, "--address", help="--engine ray: cluster address (default: start a local Ray)")
WorkersOpt = typer.Option(None, "--workers", help="--engine ray: worker actors (default: CPUs ÷ threads per worker)")
WorkerThreadsOpt = typer.Option(1, "--threads-per-worker", help="--engine ray: onnxruntime threads per worker")


class CliError(Exception):
    pass


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def _expand(spec: str) -> tuple[list[Path], bool]:
    """A file, a directory (its images) or a glob → (files, is_batch). A name that exists is taken
    literally even when it contains * ? [ ] (``img[1].png``); only a name that does not is a pattern."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return [f for f in files if f.suffix.lower() in READABLE | {SUFFIX}], True
    if p.exists():
        return [p], False
    if any(ch in spec for ch in "*?["):
        return sorted(Path(f) for f in glob.glob(spec) if Path(f).is_file()), True
    raise CliError(f"{spec}: no such file or directory")


def _targets(inp: str, out: Path, suffix: str) -> list[tuple[Path, Path]]:
    files, batch = _expand(inp)
    if batch:
        if not files:  # before creating anything: an unmatched pattern leaves no empty folder behind
            raise CliError(f"{inp}: no {'matching files' if not Path(inp).is_dir() else 'images in this folder'}")
        if out.exists() and not out.is_dir():
            raise CliError(f"{out} must be a directory when the input is a directory or a glob")
        out.mkdir(parents=True, exist_ok=True)
        return [(f, out / (f.stem + suffix)) for f in files]
    if out.is_dir():
        return [(files[0], out / (files[0].stem + suffix))]
    return [(files[0], out)]


def _collisions(pairs: list[tuple[Path, Path]]) -> dict[Path, str]:
    """Inputs whose output name another input of the batch also maps to (a.jpg, a.png → a.hfc):
    none of them is written, whatever --force says, rather than one silently replacing the other."""
    by_dst: dict[Path, list[Path]] = {}
    for src, dst in pairs:
        by_dst.setdefault(dst, []).append(src)
    return {src: f"output {dst} would also be written from " + ", ".join(str(o) for o in srcs if o != src)
            for dst, srcs in by_dst.items() if len(srcs) > 1 for src in srcs}


def _size_request(mask: str, rate: int | None, quality: int | None, target_bpp: float | None,
                  max_bytes: int | None) -> SizeRequest:
    request = SizeRequest(quality, target_bpp, max_bytes)
    try:
        request.check(mask, rate, _flag)
    except ValueError as e:
        raise CliError(str(e)) from None
    return request


def _check_options(provider: str, threads: int | None) -> None:
    try:
        check_provider(provider)
    except ValueError:
        raise CliError(f"unknown --provider {provider!r}; choose one of {', '.join(PROVIDERS)}") from None
    try:
        check_threads(threads)
    except ValueError:
        raise CliError(f"--threads must be from 1 to {MAX_THREADS} (4 × this machine's CPUs), got {threads}") from None


def _write_output(dst: Path, data: bytes, force: bool) -> None:
    from .imageio import write_bytes_atomic

    try:
        write_bytes_atomic(dst, data, overwrite=force)
    except FileExistsError:  # created by someone else since _check_output: exclusive creation lost the race
        raise CliError(f"{dst} exists (use --force to overwrite)") from None


def _describe(e: BaseException) -> str:
    """One line for any exception: our own errors say what happened; others (cv2.error,
    onnxruntime's, a bug) also say their type."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        text = lines[0] if lines else ""
        if not isinstance(e, CliError | ValueError):
            text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text or type(e).__name__


def _check_output(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and src.resolve() == dst.resolve():
        raise CliError(f"{dst}: refusing to overwrite the input file")
    if dst.exists() and not force:
        raise CliError(f"{dst} exists (use --force to overwrite)")
    if not dst.parent.is_dir():
        raise CliError(f"{dst.parent}: no such directory")


def _load(model: Path | None, provider: str, threads: int | None):  # noqa: ANN202
    from .codec import Codec

    return Codec.load(model, provider=provider, threads=threads)


def _check_rate(codec: Any, rate: int | None, stream: str) -> None:  # noqa: ANN401
    """Refuse a --rate the model does not have (or a vq stream with one) once, not for every file."""
    try:
        codec.check_rate(rate, stream)
    except ValueError as e:
        raise CliError(f"--rate: {e}") from None


# A per-image bar from this size on: a call then takes seconds on 2 cores (a 1 MP decode ≈ 3 s, benchmarks/RESULTS.md);
# on smaller images it would only flicker.
LARGE_IMAGE_PIXELS = 1 << 20

ImageProgress = Callable[[str, int], AbstractContextManager[Callable[[int, int], None] | None]]


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class _Bars:
    """Progress on stderr, only when stderr is a terminal (never in a pipe, a log or a test): the
    files of a batch, and inside a large image the Codec's own ``progress(done, total)`` (tiles when
    compressing, picture windows when decompressing)."""

    def __init__(self, label: str, files: int):
        from rich.console import Console
        from rich.progress import Progress

        self.shown = _stderr_is_terminal()
        # result lines stay on stdout: through the bar's console only when both are the same terminal
        self.lines_through_bar = self.shown and sys.stdout.isatty()
        self.bar = Progress(console=Console(stderr=True), disable=not self.shown, transient=True,
                            redirect_stdout=False)
        self.files = self.bar.add_task(f"{label} {files} files", total=files, visible=files > 1)

    def __enter__(self) -> _Bars:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def print(self, line: str) -> None:
        self.bar.console.print(line, highlight=False, markup=False) if self.lines_through_bar else typer.echo(line)

    @contextmanager
    def image(self, label: str, pixels: int) -> Iterator[Callable[[int, int], None] | None]:
        """The ``progress`` callback for one image: None (no bar) unless shown and the image is large."""
        if not self.shown or pixels < LARGE_IMAGE_PIXELS:
            yield None
            return
        task = self.bar.add_task(label, total=None)
        try:
            yield lambda done, total: self.bar.update(task, completed=done, total=total, refresh=True)
        finally:
            self.bar.remove_task(task)


def _run_batch(pairs: list[tuple[Path, Path]], job: Callable[[Path, Path, ImageProgress], str], label: str,
               refused: dict[Path, str] | None = None) -> None:
    """Run ``job`` on every pair; any failure is one line naming the file and does not stop the
    others. ``refused`` inputs fail with their reason without running. ``job`` gets the batch's
    per-image progress (``_Bars.image``) to hand to the Codec."""
    if not pairs:
        raise CliError("no input files")
    failures: list[str] = []
    with _Bars(label, len(pairs)) as bars:
        for src, dst in pairs:
            try:
                if refused and src in refused:
                    raise CliError(refused[src])
                line = job(src, dst, bars.image)
                if line:
                    bars.print(line)
            except Exception as e:  # noqa: BLE001 — one bad file must not end the batch
                msg = _describe(e)
                msg = msg if msg.startswith(str(src)) else f"{src}: {msg}"
                failures.append(msg)
                _err(msg)
            bars.bar.advance(bars.files)
    if len(pairs) > 1:
        typer.echo(f"{len(pairs) - len(failures)} done, {len(failures)} failed", err=bool(failures))
    if failures:
        raise typer.Exit(1)


def _guard(fn: Callable[[], None]) -> None:
    try:
        fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 — every failure is one line and a non-zero exit
        _err(_describe(e))
        raise typer.Exit(1) from None


@app.command(cls=_PlainCommand)
def compress(
    inp: str = typer.Argument(..., metavar="IN", help="image, directory or quoted glob"),
    out: str = typer.Argument(..., metavar="OUT", help=f"{SUFFIX} file, or a directory for several inputs"),
    mask: str = MaskOpt, stream: str = StreamOpt, rate: int = RateOpt,
    quality: int = QualityOpt, target_bpp: float = TargetBppOpt, max_bytes: int = MaxBytesOpt,
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt, force: bool = ForceOpt,
    engine: str = EngineOpt, address: str = AddressOpt, workers: int = WorkersOpt,
    threads_per_worker: int = WorkerThreadsOpt,
) -> None:
    """Compress images to .hfc streams."""

    def go() -> None:
        from .imageio import read_image

        if mask not in CHOICES:
            raise CliError(f"unknown --mask {mask!r}; choose one of {', '.join(CHOICES)}")
        if stream not in STREAMS:
            raise CliError(f"unknown --stream {stream!r}; choose one of {', '.join(STREAMS)}")
        size = _size_request(mask, rate, quality, target_bpp, max_bytes)
        ray = _engine(engine, address, workers, threads_per_worker, threads)
        if ray is not None:
            _ray_compress(inp, out, mask, stream, rate, size, model, provider, force, ray)
            return
        _check_options(provider, threads)
        pairs = _targets(inp, Path(out), SUFFIX)
        codec = _load(model, provider, threads)
        _check_rate(codec, rate, stream)

        def job(src: Path, dst: Path, image_progress: ImageProgress) -> str:
            _check_output(src, dst, force)
            rgb, warns = read_image(src)
            for w in warns:
                typer.echo(f"warning: {src}: {w}", err=True)
            with image_progress(f"compressing {src.name}", rgb.shape[0] * rgb.shape[1]) as progress:
                data = codec.compress(rgb, mask=mask, stream=stream, progress=progress, rate=rate, **size.kwargs())
            _write_output(dst, data, force)
            bpp = 8 * len(data) / (rgb.shape[0] * rgb.shape[1])
            return f"{src} → {dst}: {len(data)} bytes, {bpp:.4f} bpp"

        _run_batch(pairs, job, "compressing", _collisions(pairs))

    _guard(go)


@app.command(cls=_PlainCommand)
def decompress(
    inp: str = typer.Argument(..., metavar="IN", help=f"{SUFFIX} file, directory or quoted glob"),
    out: Path = typer.Argument(..., metavar="OUT", help="image file (format from its extension) or directory"),
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt, force: bool = ForceOpt,
) -> None:
    """Decompress .hfc streams to images (PNG when OUT is a directory)."""

    def go() -> None:
        from .imageio import encode_image

        _check_options(provider, threads)
        pairs = _targets(inp, out, ".png")
        codec = _load(model, provider, threads)

        def job(src: Path, dst: Path, image_progress: ImageProgress) -> str:
            _check_output(src, dst, force)
            data = src.read_bytes()
            size = codec.info(data)
            with image_progress(f"decompressing {src.name}", size.width * size.height) as progress:
                rgb = codec.decompress(data, progress=progress)
            _write_output(dst, encode_image(rgb, dst.suffix), force)
            return f"{src} → {dst}: {rgb.shape[1]}×{rgb.shape[0]}"

        _run_batch(pairs, job, "decompressing", _collisions(pairs))

    _guard(go)


@app.command(cls=_PlainCommand)
def info(file: Path = typer.Argument(..., metavar="FILE", help=f"a {SUFFIX} stream"), model: Path = ModelOpt) -> None:
    """Show a stream's size, bpp, schedules and model."""

    def go() -> None:
        from .codec import Codec

        codec = Codec.load(model, provider="cpu")
        try:
            i = codec.info(file.read_bytes())
        except OSError as e:  # its own text names the file too: say it once
            raise CliError(f"{file}: {e.strerror or _describe(e)}") from None
        except Exception as e:  # noqa: BLE001 — say which file, whatever went wrong
            raise CliError(f"{file}: {_describe(e)}") from None
        same = "matches" if i.model_id == codec.model.model_id.hex() else "does NOT match"
        typer.echo(f"{file}: {i.stream} stream, {i.width}×{i.height}, {i.bytes} bytes "
                   f"(header {i.header_bytes}), {i.bpp:.4f} bpp")
        typer.echo(f"model {i.model_id} ({same} the loaded model {codec.model.name})")
        if i.stream != "vq":
            of = (f" of {codec.model.rate_points} (0…{codec.model.rate_points - 1}, base {codec.model.base_rate})"
                  if same == "matches" else "")
            typer.echo(f"rate point {i.rate}{of}")
        if i.schedules:
            typer.echo("tiles per schedule: " + ", ".join(f"{k}: {v}" for k, v in i.schedules.items()))

    _guard(go)


@app.command("eval", cls=_PlainCommand)
def evaluate(
    inputs: list[str] = typer.Argument(..., metavar="IN", help="images, directories or quoted globs"),
    mask: str = MaskOpt, stream: str = StreamOpt, rate: int = RateOpt,
    quality: int = QualityOpt, target_bpp: float = TargetBppOpt, max_bytes: int = MaxBytesOpt,
    csv_path: Path = typer.Option(None, "--csv", help="write per-image rows here"),
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt,
    engine: str = EngineOpt, address: str = AddressOpt, workers: int = WorkersOpt,
    threads_per_worker: int = WorkerThreadsOpt,
) -> None:
    """Round-trip images in memory: bpp (real bytes), PSNR, MS-SSIM, sharpness ratio, seconds."""

    def go() -> None:
        from . import metrics
        from .imageio import read_image

        size = _size_request(mask, rate, quality, target_bpp, max_bytes)
        ray = _engine(engine, address, workers, threads_per_worker, threads)
        if ray is not None:
            _ray_eval(inputs, mask, stream, rate, size, model, provider, csv_path, ray)
            return
        files = [f for spec in inputs for f in _expand(spec)[0] if f.suffix != SUFFIX]
        codec = _load(model, provider, threads)
        _check_rate(codec, rate, stream)
        perceptual = metrics.lpips_alex()  # LPIPS-Alex when torch and its weights are installed
        rows: list[dict[str, object]] = []

        def job(src: Path, _: Path, image_progress: ImageProgress) -> str:
            rgb, _w = read_image(src)
            pixels = rgb.shape[0] * rgb.shape[1]
            with image_progress(f"compressing {src.name}", pixels) as progress:
                t0 = time.perf_counter()
                data = codec.compress(rgb, mask=mask, stream=stream, progress=progress, rate=rate, **size.kwargs())
                t1 = time.perf_counter()
            with image_progress(f"decompressing {src.name}", pixels) as progress:
                rec = codec.decompress(data, progress=progress)
                t2 = time.perf_counter()
            row = {"image": src.name, "width": rgb.shape[1], "height": rgb.shape[0], "bytes": len(data),
                   **metrics.quality(rgb, len(data), rec, perceptual), "encode_s": t1 - t0, "decode_s": t2 - t1}
            rows.append(row)
            lp = f"LPIPS-Alex {row['lpips']:.4f}  " if "lpips" in row else ""
            return (f"{src.name:24s} {row['bpp']:.4f} bpp  {row['psnr']:.2f} dB  MS-SSIM {row['ms_ssim']:.4f}  {lp}"
                    f"sharpness {row['sharpness']:.2f} (½: {row['sharpness_half']:.2f})  "
                    f"enc {row['encode_s']:.2f}s dec {row['decode_s']:.2f}s")

        try:
            _run_batch([(f, f) for f in files], job, "evaluating")
        finally:
            _eval_summary(rows, csv_path)

    _guard(go)


def _eval_summary(rows: list[dict[str, object]], csv_path: Path | None) -> None:
    """The mean line of ``eval`` and its CSV, for either engine."""
    if rows:
        keys = ("bpp", "psnr", "ms_ssim", "sharpness", "encode_s", "decode_s")
        mean = {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}
        scored = [float(r["lpips"]) for r in rows if r.get("lpips") is not None]
        lp = f"LPIPS-Alex {sum(scored) / len(scored):.4f}  " if scored else ""
        typer.echo(f"{'mean of ' + str(len(rows)):24s} {mean['bpp']:.4f} bpp  {mean['psnr']:.2f} dB  "
                   f"MS-SSIM {mean['ms_ssim']:.4f}  {lp}sharpness {mean['sharpness']:.2f}  "
                   f"enc {mean['encode_s']:.2f}s dec {mean['decode_s']:.2f}s")
        if csv_path:
            with open(csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)


# --------------------------------------------------------------- --engine ray (runtime/scale.py)
def _engine(engine: str, address: str | None, workers: int | None, threads_per_worker: int,
            threads: int | None) -> Engine | None:
    """None for the local engine, else the ``scale.Engine`` the options describe. Ray is imported
    only here, so the local CLI works without the ``[scale]`` extra."""
    if engine not in ("local", "ray"):
        raise CliError(f"unknown --engine {engine!r}; choose local or ray")
    if engine == "local":
        if address is not None or workers is not None or threads_per_worker != 1:
            raise CliError("--address, --workers and --threads-per-worker need --engine ray")
        return None
    if threads is not None:
        raise CliError("--engine ray sets threads with --threads-per-worker")
    try:
        from . import scale
    except ImportError as e:
        missing = f"pip install 'hybridflow[scale]' ({e.name} is missing)"
        raise CliError(f"--engine ray needs the scale extra: {missing}") from None
    return scale.Engine(address=address, workers=workers, threads_per_worker=threads_per_worker)


def _ray_compress(src: str, dst: str, mask: str, stream: str, rate: int | None, size: SizeRequest,
                  model: Path | None, provider: str, force: bool, engine: Engine) -> None:
    from . import scale

    s = scale.compress_archive(src, dst, mask=mask, stream=stream, rate=rate, size=size, model=model,
                               provider=provider, force=force, engine=engine)
    failed = scale.failures(s.manifest) if s.failed else []
    for path, error in failed[:20]:
        _err(f"{path}: {error}")
    if len(failed) > 20:
        _err(f"… and {len(failed) - 20} more failures (see the manifest)")
    typer.echo(f"{s.counts.get('ok', 0)} done, {s.counts.get('skipped', 0)} skipped, {len(failed)} failed "
               f"in {s.seconds:.1f}s; manifest: {s.manifest}", err=bool(failed))
    if failed:
        raise typer.Exit(1)


def _ray_eval(inputs: list[str], mask: str, stream: str, rate: int | None, size: SizeRequest,
              model: Path | None, provider: str, csv_path: Path | None, engine: Engine) -> None:
    from . import scale

    e = scale.evaluate_archive(inputs, mask=mask, stream=stream, rate=rate, size=size, model=model,
                               provider=provider, engine=engine)
    rows = e.rows.to_pylist()
    for r in rows:
        if r["status"] != "ok":
            _err(f"{r['path']}: {r['error']}")
    _eval_summary([{k: v for k, v in r.items() if k not in ("status", "error")} for r in rows if r["status"] == "ok"],
                  csv_path)
    if e.failed:
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from .bitstream import FORMAT_VERSION

        try:
            v = version("hybridflow")
        except PackageNotFoundError:
            v = "(not installed)"
        typer.echo(f"hf-run {v} (stream format {FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit")) -> None:
    """HybridFlow learned image codec (extreme low bitrates)."""


def main() -> None:
    """click reports a malformed command line (``--quality abc``, a missing argument) as usage, a
    hint and the error; like every other failure here it becomes one line and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        _err("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # click's exceptions (typer vendors click)
        message = e.format_message()  # type: ignore[attr-defined]
        if "\n" in message.strip():  # hf-run alone: the help, as click shows it
            e.show()  # type: ignore[attr-defined]
        else:
            ctx = getattr(e, "ctx", None)
            _err(f"{message} (see {ctx.command_path if ctx else 'hf-run'} --help)")
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
