"""``hf-run``: compress, decompress, inspect and evaluate with the HybridFlow runtime.

Errors are one line on stderr and a non-zero exit; inputs are never overwritten; outputs appear
atomically and an existing output needs ``--force``."""

from __future__ import annotations

import csv
import glob
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .bitstream import STREAMS
from .imageio import READABLE, SUFFIX
from .masking import CHOICES
from .session import PROVIDERS

if TYPE_CHECKING:
    from .scale import Engine

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="HybridFlow learned image codec (extreme low bitrates).")

ModelOpt = typer.Option(None, "--model", help="model directory (default: the model shipped with the package)")
ProviderOpt = typer.Option("auto", "--provider", help=f"onnxruntime provider: {'|'.join(PROVIDERS)}")
ThreadsOpt = typer.Option(None, "--threads", help="threads per graph (default: onnxruntime decides)")
ForceOpt = typer.Option(False, "--force", "-f", help="overwrite existing outputs")
EngineOpt = typer.Option("local", "--engine", help="local | ray (folders or URIs on a Ray cluster: see README)")
AddressOpt = typer.Option(None, "--address", help="--engine ray: cluster address (default: start a local Ray)")
WorkersOpt = typer.Option(None, "--workers", help="--engine ray: worker actors (default: CPUs ÷ threads per worker)")
WorkerThreadsOpt = typer.Option(1, "--threads-per-worker", help="--engine ray: onnxruntime threads per worker")


class CliError(Exception):
    pass


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def _expand(spec: str) -> tuple[list[Path], bool]:
    """A file, a directory (its images) or a glob → (files, is_batch)."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return [f for f in files if f.suffix.lower() in READABLE | {SUFFIX}], True
    if any(ch in spec for ch in "*?["):
        return sorted(Path(f) for f in glob.glob(spec) if Path(f).is_file()), True
    if not p.exists():
        raise CliError(f"{spec}: no such file or directory")
    return [p], False


def _targets(inp: str, out: Path, suffix: str) -> list[tuple[Path, Path]]:
    files, batch = _expand(inp)
    if batch:
        if out.exists() and not out.is_dir():
            raise CliError(f"{out} must be a directory when the input is a directory or a glob")
        out.mkdir(parents=True, exist_ok=True)
        return [(f, out / (f.stem + suffix)) for f in files]
    if out.is_dir():
        return [(files[0], out / (files[0].stem + suffix))]
    return [(files[0], out)]


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


def _run_batch(pairs: list[tuple[Path, Path]], job: Callable[[Path, Path], str], label: str) -> None:
    """Run ``job`` on every pair; failures are reported and do not stop the others."""
    from rich.progress import Progress

    if not pairs:
        raise CliError("no input files")
    failures: list[str] = []
    show = len(pairs) > 1 and sys.stderr.isatty()
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task(label, total=len(pairs))
        for src, dst in pairs:
            try:
                line = job(src, dst)
                if line:
                    bar.console.print(line, highlight=False) if show else typer.echo(line)
            except (CliError, ValueError, OSError, RuntimeError, MemoryError) as e:
                failures.append(f"{src}: {e}")
                _err(f"{src}: {e}")
            bar.advance(task)
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
    except (CliError, ValueError, OSError, RuntimeError, MemoryError) as e:
        _err(str(e))
        raise typer.Exit(1) from None


@app.command()
def compress(
    inp: str = typer.Argument(..., metavar="IN", help="image, directory or quoted glob"),
    out: str = typer.Argument(..., metavar="OUT", help=f"{SUFFIX} file, or a directory for several inputs"),
    mask: str = typer.Option("auto", "--mask", help=f"which indices to send: {'|'.join(CHOICES)}"),
    stream: str = typer.Option("hybrid", "--stream", help=f"{'|'.join(STREAMS)}"),
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt, force: bool = ForceOpt,
    engine: str = EngineOpt, address: str = AddressOpt, workers: int = WorkersOpt,
    threads_per_worker: int = WorkerThreadsOpt,
) -> None:
    """Compress images to .hfc streams."""

    def go() -> None:
        from .imageio import read_image, write_bytes_atomic

        if mask not in CHOICES:
            raise CliError(f"unknown --mask {mask!r}; choose one of {', '.join(CHOICES)}")
        if stream not in STREAMS:
            raise CliError(f"unknown --stream {stream!r}; choose one of {', '.join(STREAMS)}")
        ray = _engine(engine, address, workers, threads_per_worker, threads)
        if ray is not None:
            _ray_compress(inp, out, mask, stream, model, provider, force, ray)
            return
        pairs = _targets(inp, Path(out), SUFFIX)
        codec = _load(model, provider, threads)

        def job(src: Path, dst: Path) -> str:
            _check_output(src, dst, force)
            rgb, warns = read_image(src)
            for w in warns:
                typer.echo(f"warning: {src}: {w}", err=True)
            data = codec.compress(rgb, mask=mask, stream=stream)
            write_bytes_atomic(dst, data)
            bpp = 8 * len(data) / (rgb.shape[0] * rgb.shape[1])
            return f"{src} → {dst}: {len(data)} bytes, {bpp:.4f} bpp"

        _run_batch(pairs, job, "compressing")

    _guard(go)


@app.command()
def decompress(
    inp: str = typer.Argument(..., metavar="IN", help=f"{SUFFIX} file, directory or quoted glob"),
    out: Path = typer.Argument(..., metavar="OUT", help="image file (format from its extension) or directory"),
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt, force: bool = ForceOpt,
) -> None:
    """Decompress .hfc streams to images (PNG when OUT is a directory)."""

    def go() -> None:
        from .imageio import encode_image, write_bytes_atomic

        pairs = _targets(inp, out, ".png")
        codec = _load(model, provider, threads)

        def job(src: Path, dst: Path) -> str:
            _check_output(src, dst, force)
            rgb = codec.decompress(src.read_bytes())
            write_bytes_atomic(dst, encode_image(rgb, dst.suffix))
            return f"{src} → {dst}: {rgb.shape[1]}×{rgb.shape[0]}"

        _run_batch(pairs, job, "decompressing")

    _guard(go)


@app.command()
def info(file: Path = typer.Argument(..., help=f"a {SUFFIX} stream"), model: Path = ModelOpt) -> None:
    """Show a stream's size, bpp, schedules and model."""

    def go() -> None:
        from .codec import Codec

        codec = Codec.load(model, provider="cpu")
        i = codec.info(file.read_bytes())
        same = "matches" if i.model_id == codec.model.model_id.hex() else "does NOT match"
        typer.echo(f"{file}: {i.stream} stream, {i.width}×{i.height}, {i.bytes} bytes "
                   f"(header {i.header_bytes}), {i.bpp:.4f} bpp")
        typer.echo(f"model {i.model_id} ({same} the loaded model {codec.model.name})")
        if i.schedules:
            typer.echo("tiles per schedule: " + ", ".join(f"{k}: {v}" for k, v in i.schedules.items()))

    _guard(go)


@app.command("eval")
def evaluate(
    inputs: list[str] = typer.Argument(..., metavar="IN...", help="images, directories or quoted globs"),
    mask: str = typer.Option("auto", "--mask"), stream: str = typer.Option("hybrid", "--stream"),
    csv_path: Path = typer.Option(None, "--csv", help="write per-image rows here"),
    model: Path = ModelOpt, provider: str = ProviderOpt, threads: int = ThreadsOpt,
    engine: str = EngineOpt, address: str = AddressOpt, workers: int = WorkersOpt,
    threads_per_worker: int = WorkerThreadsOpt,
) -> None:
    """Round-trip images in memory: bpp (real bytes), PSNR, MS-SSIM, sharpness ratio, seconds."""

    def go() -> None:
        from . import metrics
        from .imageio import read_image

        ray = _engine(engine, address, workers, threads_per_worker, threads)
        if ray is not None:
            _ray_eval(inputs, mask, stream, model, provider, csv_path, ray)
            return
        files = [f for spec in inputs for f in _expand(spec)[0] if f.suffix != SUFFIX]
        codec = _load(model, provider, threads)
        rows: list[dict[str, object]] = []

        def job(src: Path, _: Path) -> str:
            rgb, _w = read_image(src)
            t0 = time.perf_counter()
            data = codec.compress(rgb, mask=mask, stream=stream)
            t1 = time.perf_counter()
            rec = codec.decompress(data)
            t2 = time.perf_counter()
            row = {"image": src.name, "width": rgb.shape[1], "height": rgb.shape[0], "bytes": len(data),
                   **metrics.quality(rgb, len(data), rec), "encode_s": t1 - t0, "decode_s": t2 - t1}
            rows.append(row)
            return (f"{src.name:24s} {row['bpp']:.4f} bpp  {row['psnr']:.2f} dB  MS-SSIM {row['ms_ssim']:.4f}  "
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
        typer.echo(f"{'mean of ' + str(len(rows)):24s} {mean['bpp']:.4f} bpp  {mean['psnr']:.2f} dB  "
                   f"MS-SSIM {mean['ms_ssim']:.4f}  sharpness {mean['sharpness']:.2f}  "
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


def _ray_compress(src: str, dst: str, mask: str, stream: str, model: Path | None, provider: str, force: bool,
                  engine: Engine) -> None:
    from . import scale

    s = scale.compress_archive(src, dst, mask=mask, stream=stream, model=model, provider=provider, force=force,
                               engine=engine)
    failed = scale.failures(s.manifest) if s.failed else []
    for path, error in failed[:20]:
        _err(f"{path}: {error}")
    if len(failed) > 20:
        _err(f"… and {len(failed) - 20} more failures (see the manifest)")
    typer.echo(f"{s.counts.get('ok', 0)} done, {s.counts.get('skipped', 0)} skipped, {len(failed)} failed "
               f"in {s.seconds:.1f}s; manifest: {s.manifest}", err=bool(failed))
    if failed:
        raise typer.Exit(1)


def _ray_eval(inputs: list[str], mask: str, stream: str, model: Path | None, provider: str,
              csv_path: Path | None, engine: Engine) -> None:
    from . import scale

    e = scale.evaluate_archive(inputs, mask=mask, stream=stream, model=model, provider=provider, engine=engine)
    rows = e.rows.to_pylist()
    for r in rows:
        if r["status"] != "ok":
            _err(f"{r['path']}: {r['error']}")
    _eval_summary([{k: v for k, v in r.items() if k not in ("status", "error")} for r in rows if r["status"] == "ok"],
                  csv_path)
    if e.failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
