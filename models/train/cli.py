"""``hf-train``: one sub-command per training stage, plus the release tools. Every run resumes from
``RUN_DIR/last.pt``.

A stage's options are the fields of its dataclasses (``options.py``): where it reads and writes (the
``…Files`` classes below), its training config and, where the stage builds a network, the model config
(both saved in every checkpoint). ``hf-train stage2 --help`` lists them with their defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from . import options

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train HybridFlow's stages.")

CACHE = Path(".cache/hybridflow")
FORWARDED = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True}, "add_help_option": False}


@dataclass(kw_only=True)
class RunFiles:
    """Where a stage writes (not part of the saved training config)."""

    run_dir: Path = field(metadata={"help": "checkpoints and log.jsonl go here; a run resumes from its last.pt"})
    cache_dir: Path = field(default=CACHE, metadata={"help": "decoded training images and the stages' tile caches"})


@dataclass(kw_only=True)
class FrozenFiles(RunFiles):
    """A later stage's frozen stage-1 models, too."""

    vq: Path = field(metadata={"help": "frozen stage1-vq checkpoint", "must_exist": True})
    cont: Path = field(metadata={"help": "frozen stage1-cont checkpoint", "must_exist": True})


@dataclass(kw_only=True)
class Stage2Files(FrozenFiles):
    cache_only: bool = field(default=False, metadata={"help": "only build the token/guidance cache, then exit"})


@dataclass(kw_only=True)
class UpsamplerFiles(RunFiles):
    cont: Path = field(metadata={"help": "stage1-cont checkpoint (frozen; the run's checkpoint adds the upsampler)",
                                 "must_exist": True})


@dataclass(kw_only=True)
class Stage3Files(FrozenFiles):
    predictor: Path = field(metadata={"help": "frozen stage2 checkpoint", "must_exist": True})


@dataclass(kw_only=True)
class OutputFiles(Stage3Files):
    correction: Path = field(metadata={"help": "frozen stage3 checkpoint (the correction network)",
                                       "must_exist": True})


def stage_specs() -> dict[str, tuple[options.Spec, ...]]:
    """For each training command, the dataclasses whose fields are its options, in the order
    ``parse_stage`` returns them filled (imported here: they pull in torch)."""
    from ..hyperprior import ContConfig
    from ..transformer import TransformerConfig
    from ..vq import VQConfig
    from .fusion import FusionTrainConfig
    from .output import OutputTrainConfig
    from .stage1_cont import ContTrainConfig
    from .stage1_vq import VQTrainConfig
    from .stage2 import Stage2TrainConfig, new_model_config
    from .stage3 import Stage3TrainConfig
    from .upsampler import UpsamplerTrainConfig

    runs = Path("runs")
    return {
        "stage1-vq": ((RunFiles, {"run_dir": runs / "vq"}), VQTrainConfig, VQConfig),
        "stage1-cont": ((RunFiles, {"run_dir": runs / "cont"}), ContTrainConfig, ContConfig),
        "stage2": ((Stage2Files, {"run_dir": runs / "stage2"}), Stage2TrainConfig,
                   (TransformerConfig, vars(new_model_config()))),
        "stage3": ((Stage3Files, {"run_dir": runs / "stage3"}), Stage3TrainConfig),
        "output": ((OutputFiles, {"run_dir": runs / "output"}), OutputTrainConfig),
        "upsampler": ((UpsamplerFiles, {"run_dir": runs / "upsampler"}), UpsamplerTrainConfig),
        "fusion": ((RunFiles, {"run_dir": runs / "fusion"}), FusionTrainConfig),
    }


def parse_stage(stage: str, argv: Sequence[str], description: str | None = None) -> list[Any]:
    """``hf-train STAGE ARGV…`` → its files, its training config and (stages 1 and 2) its model config."""
    specs = stage_specs()[stage]
    p = options.parser(f"hf-train {stage}", description, *specs)
    if stage == "stage2":  # the short form the documented runs use
        p.add_argument("--layers", type=int, help="sets both --enc-layers and --dec-layers")
    ns = p.parse_args(argv)
    if getattr(ns, "layers", None) is not None:
        ns.enc_layers = ns.dec_layers = ns.layers
    return [options.build(spec[0] if isinstance(spec, tuple) else spec, ns) for spec in specs]


def _stage(stage: str, ctx: typer.Context, description: str | None) -> list[Any]:
    """``parse_stage``, then a one-line error, before any work, for a checkpoint that is not there."""
    configs = parse_stage(stage, ctx.args, description)
    for path in options.must_exist(*configs):
        if not Path(path).is_file():
            typer.echo(f"error: {path}: no such checkpoint", err=True)
            raise typer.Exit(1)
    return configs


@app.command("stage1-vq", **FORWARDED)
def stage1_vq(ctx: typer.Context) -> None:
    """VQ autoencoder (discrete stream)."""
    from .stage1_vq import train

    files, cfg, model_cfg = _stage("stage1-vq", ctx, stage1_vq.__doc__)
    train(files.run_dir, cfg, model_cfg, files.cache_dir)


@app.command("stage1-cont", **FORWARDED)
def stage1_cont(ctx: typer.Context) -> None:
    """Continuous hyperprior codec on the downsampled image."""
    from .stage1_cont import train

    files, cfg, model_cfg = _stage("stage1-cont", ctx, stage1_cont.__doc__)
    train(files.run_dir, cfg, model_cfg, files.cache_dir)


@app.command("stage2", **FORWARDED)
def stage2(ctx: typer.Context) -> None:
    """Masked-token transformer guided by the continuous stream."""
    from .stage2 import train

    files, cfg, model_cfg = _stage("stage2", ctx, stage2.__doc__)
    train(files.run_dir, cfg, model_cfg, files.vq, files.cont, files.cache_dir, files.cache_only)


@app.command("stage3", **FORWARDED)
def stage3(ctx: typer.Context) -> None:
    """Correction network (L1 + MS-SSIM/FFT term [+ LPIPS-VGG, texture, GAN]); optionally the VQ decoder too."""
    from .stage3 import train

    files, cfg = _stage("stage3", ctx, stage3.__doc__)
    train(files.run_dir, cfg, files.vq, files.cont, files.predictor, files.cache_dir)


@app.command("output", **FORWARDED)
def output(ctx: typer.Context) -> None:
    """The decoder's light output stage (pixels from half-resolution features), distilled from the full one."""
    from .output import train

    files, cfg = _stage("output", ctx, output.__doc__)
    train(files.run_dir, cfg, files.vq, files.cont, files.predictor, files.correction, files.cache_dir)


@app.command("upsampler", **FORWARDED)
def upsampler(ctx: typer.Context) -> None:
    """Learned ×4 up-sampling of the continuous stream (frozen codec, MSE)."""
    from .upsampler import train

    files, cfg = _stage("upsampler", ctx, upsampler.__doc__)
    train(files.run_dir, cfg, files.cont, files.cache_dir)


@app.command("fusion", **FORWARDED)
def fusion(ctx: typer.Context) -> None:
    """Fusion of a hybrid decode's two pictures (trained on an exported model's decodes; the rest frozen)."""
    from .fusion import train

    files, cfg = _stage("fusion", ctx, fusion.__doc__)
    train(files.run_dir, cfg, files.cache_dir)


@app.command()
def bundle(
    out: Path = typer.Option(..., help="release bundle to write (what hf-export reads)"),
    vq: Path = typer.Option(..., help="stage1-vq checkpoint"),
    cont: Path = typer.Option(..., help="stage1-cont checkpoint"),
    predictor: Path = typer.Option(None, help="stage2 checkpoint (optional)"),
    correction: Path = typer.Option(None, help="stage3 checkpoint (optional)"),
    fusion: Path = typer.Option(None, help="fusion checkpoint (optional; hf-train fusion)"),
    fusion_lowpass: float = typer.Option(None, help="σ in pixels of the fusion's low-frequency anchor "
                                                    "(models/fusion.py); 0 = none; default: the checkpoint's"),
    name: str = typer.Option("hybridflow", help="model name shown by hf-run info"),
    tiles: int = typer.Option(600, help="training tiles for the index prior and complexity statistics"),
    auto_saving: float = typer.Option(0.125, help="auto mode's rate saving vs uniform 1_4 on training tiles "
                                                  "(sets its low threshold); 0 = the method's literal 0.24"),
    cache_dir: Path = CACHE,
) -> None:
    """Collect trained stages into one small fp16 bundle with its training-set statistics."""
    from .release import make_bundle

    c = make_bundle(out, vq, cont, predictor, correction, name, cache_dir, tiles, auto_saving, fusion, fusion_lowpass)
    used = int((c.index_counts > 0).sum())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); codes used on {tiles} train tiles: {used}")
    print(f"complexity lo={c.complexity.lo} hi={c.complexity.hi} "
          f"thresholds {c.complexity.low_threshold:.3f} / {c.complexity.high_threshold:.3f}")


@app.command()
def unbundle(
    bundle_path: Path = typer.Argument(..., help="release bundle, or a model directory written by hf-export "
                                                 "(e.g. runtime/assets/default)"),
    out: Path = typer.Option(..., help="folder for vq.pt, cont.pt, predictor.pt, correction.pt, fusion.pt"),
) -> None:
    """Split a bundle into stage checkpoints, so training can start again from a shipped release
    (fp16-rounded weights; the VQ discriminator is not in a bundle and starts fresh)."""
    from .release import split_bundle

    for path in split_bundle(bundle_path, out):
        print(path)


@app.command()
def rebundle(
    model_dir: Path = typer.Argument(..., help="model directory written by hf-export (e.g. runtime/assets/default)"),
    out: Path = typer.Option(..., help="bundle file to write"),
) -> None:
    """Rebuild, bit for bit, the bundle a model directory was exported from (its graphs' weights plus
    bundle_index.json and bundle_extra.bin): the release bundle is not kept in git."""
    from .release import rebuild_bundle

    try:
        rebuild_bundle(model_dir, out)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@app.command(**FORWARDED)
def pack(ctx: typer.Context) -> None:
    """Deterministic training pack for a GPU window: --out DIR [--seed S] [--mib N] (see --help)."""
    from .pack import main as pack_main

    pack_main(ctx.args)


@app.command(**FORWARDED)
def burst(ctx: typer.Context) -> None:
    """All stages in one time box (GPU window or CPU dry run): --minutes M --out DIR --data PACK
    [--device cuda|cpu] (see --help)."""
    from .burst import main as burst_main

    try:
        burst_main(ctx.args)
    except (ValueError, OSError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()
