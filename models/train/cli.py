"""``hf-train``: one sub-command per training stage. Every run resumes from ``RUN_DIR/last.pt``."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train HybridFlow's stages.")

CACHE = Path(".cache/hybridflow")


@app.command("stage1-vq")
def stage1_vq(
    run_dir: Path = typer.Option(Path("runs/vq"), help="checkpoints and log.jsonl go here"),
    steps: int = 6000,
    batch: int = 8,
    crop: int = typer.Option(128, help="training crop size; the runtime decodes 256² tiles"),
    threads: int = 1,
    disc_start: int = 2500,
    disc_weight: float = 0.1,
    adaptive_gan: bool = typer.Option(False, help="VQGAN's gradient-balanced GAN weight"),
    lr: float = 4e-4,
    lr_decay: bool = typer.Option(False, help="generator LR falls linearly to 0 at --steps"),
    init: Path = typer.Option(None, help="start from this stage1-vq checkpoint (model + discriminator)"),
    decoder_only: bool = typer.Option(False, help="freeze encoder and codebook: token maps stay as in --init"),
    val_every: int = 500,
    texture_weight: float = typer.Option(0.0, help="weight of the local detail-energy loss"),
    texture_match: str = typer.Option("rms", help="rms|energy|oriented|oriented_total (losses.py)"),
    cache_dir: Path = CACHE,
) -> None:
    """VQ autoencoder (discrete stream)."""
    from ..vq import VQConfig
    from .stage1_vq import VQTrainConfig, train

    cfg = VQTrainConfig(steps=steps, batch=batch, crop=crop, threads=threads, disc_start=disc_start,
                        disc_weight=disc_weight, adaptive_gan=adaptive_gan, lr=lr, lr_decay=lr_decay,
                        init=str(init or ""), decoder_only=decoder_only, val_every=val_every,
                        texture_weight=texture_weight, texture_match=texture_match)
    train(run_dir, cfg, VQConfig(), cache_dir)


@app.command("stage1-cont")
def stage1_cont(
    run_dir: Path = typer.Option(Path("runs/cont"), help="checkpoints and log.jsonl go here"),
    steps: int = 20000,
    batch: int = 16,
    threads: int = 1,
    target_bpp: float = 0.025,
    cache_dir: Path = CACHE,
) -> None:
    """Continuous hyperprior codec on the 4×-downsampled image."""
    from ..hyperprior import ContConfig
    from .stage1_cont import ContTrainConfig, train

    cfg = ContTrainConfig(steps=steps, batch=batch, threads=threads, target_bpp=target_bpp)
    train(run_dir, cfg, ContConfig(), cache_dir)


@app.command("stage2")
def stage2(
    vq: Path = typer.Option(..., help="frozen stage1-vq checkpoint"),
    cont: Path = typer.Option(..., help="frozen stage1-cont checkpoint"),
    run_dir: Path = typer.Option(Path("runs/stage2"), help="checkpoints, token cache and log.jsonl go here"),
    steps: int = 3000,
    batch: int = 16,
    tiles: int = 3000,
    dim: int = 192,
    layers: int = 4,
    lr: float = 5e-4,
    guidance: bool = typer.Option(True, help="--no-guidance trains the ablation without cross-attention"),
    codebook: bool = typer.Option(True, help="embed and score tokens through the VQ codebook vectors"),
    guidance_input: bool = typer.Option(True, help="also add the aligned guidance to each decoder position"),
    cache_only: bool = typer.Option(False, help="only build the token/guidance cache, then exit"),
    threads: int = 1,
    cache_dir: Path = CACHE,
) -> None:
    """Masked-token transformer guided by the continuous stream."""
    from ..transformer import TransformerConfig
    from .stage2 import Stage2TrainConfig, train

    cfg = Stage2TrainConfig(steps=steps, batch=batch, tiles=tiles, threads=threads, use_guidance=guidance, lr=lr,
                            use_codebook=codebook)
    model_cfg = TransformerConfig(dim=dim, enc_layers=layers, dec_layers=layers, guidance_input=guidance_input)
    train(run_dir, cfg, model_cfg, vq, cont, cache_dir, cache_only)


@app.command("stage3")
def stage3(
    vq: Path = typer.Option(..., help="frozen stage1-vq checkpoint"),
    cont: Path = typer.Option(..., help="frozen stage1-cont checkpoint"),
    predictor: Path = typer.Option(..., help="frozen stage2 checkpoint"),
    run_dir: Path = typer.Option(Path("runs/stage3"), help="checkpoints, tile cache and log.jsonl go here"),
    steps: int = 3000,
    batch: int = 8,
    crop_tokens: int = typer.Option(8, help="training crop in tokens (16 = the runtime's whole 256² tile)"),
    tiles: int = 1500,
    texture_weight: float = typer.Option(0.0, help="weight of the local-detail (sharpness) term"),
    texture_match: str = typer.Option("rms", help="rms|energy|oriented|oriented_total (losses.py)"),
    threads: int = 1,
    init: Path = typer.Option(None, help="start from this stage3 checkpoint instead of a copy of the VQ decoder"),
    lr: float = 2e-4,
    lr_decay: bool = typer.Option(False, help="LR falls linearly to 0 at --steps"),
    disc_weight: float = typer.Option(0.0, help="> 0 adds a patch-GAN term (gradient-balanced weight × this)"),
    disc_init: Path = typer.Option(None, help="stage1-vq checkpoint whose discriminator starts the GAN"),
    perceptual_weight: float = typer.Option(0.5, help="weight of the (1 − MS-SSIM) + FFT-amplitude term"),
    lpips_weight: float = typer.Option(0.0, help="weight of the LPIPS-VGG term (../shared/weights/lpips)"),
    train_vq_decoder: bool = typer.Option(False, help="fine-tune the VQ decoder together with the correction"),
    plain_share: float = typer.Option(0.0, help="share of steps training the plain VQ decoder on full maps"),
    decoder_norm: str = typer.Option("", help="'channel': convert both decoders to position-wise norm first"),
    bf16: bool = typer.Option(False, help="bfloat16 autocast for the forward pass"),
    val_every: int = typer.Option(0, help="score the fused decoder on val tiles every N steps (0: never)"),
    cache_dir: Path = CACHE,
) -> None:
    """Correction network (L1 + MS-SSIM/FFT term [+ LPIPS-VGG, texture, GAN]); optionally the VQ decoder too."""
    from .stage3 import Stage3TrainConfig, train

    cfg = Stage3TrainConfig(steps=steps, batch=batch, crop_tokens=crop_tokens, tiles=tiles, threads=threads,
                            texture_weight=texture_weight, texture_match=texture_match,
                            init=str(init) if init else "", lr=lr, lr_decay=lr_decay, disc_weight=disc_weight,
                            disc_init=str(disc_init) if disc_init else "", perceptual_weight=perceptual_weight,
                            lpips_weight=lpips_weight, train_vq_decoder=train_vq_decoder, plain_share=plain_share,
                            decoder_norm=decoder_norm, bf16=bf16, val_every=val_every)
    train(run_dir, cfg, vq, cont, predictor, cache_dir)


@app.command()
def bundle(
    out: Path = typer.Option(..., help="release bundle to write (what hf-export reads)"),
    vq: Path = typer.Option(..., help="stage1-vq checkpoint"),
    cont: Path = typer.Option(..., help="stage1-cont checkpoint"),
    predictor: Path = typer.Option(None, help="stage2 checkpoint (optional)"),
    correction: Path = typer.Option(None, help="stage3 checkpoint (optional)"),
    name: str = typer.Option("hybridflow", help="model name shown by hf-run info"),
    tiles: int = typer.Option(600, help="training tiles for the index prior and complexity statistics"),
    auto_saving: float = typer.Option(0.125, help="auto mode's rate saving vs uniform 1_4 on training tiles "
                                                  "(sets its low threshold); 0 = the method's literal 0.24"),
    cache_dir: Path = CACHE,
) -> None:
    """Collect trained stages into one small fp16 bundle with its training-set statistics."""
    from .release import make_bundle

    c = make_bundle(out, vq, cont, predictor, correction, name, cache_dir, tiles, auto_saving)
    used = int((c.index_counts > 0).sum())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); codes used on {tiles} train tiles: {used}")
    print(f"complexity lo={c.complexity.lo} hi={c.complexity.hi} "
          f"thresholds {c.complexity.low_threshold:.3f} / {c.complexity.high_threshold:.3f}")


@app.command()
def unbundle(
    bundle_path: Path = typer.Argument(..., help="release bundle, or a model directory written by hf-export "
                                                 "(e.g. runtime/assets/default)"),
    out: Path = typer.Option(..., help="folder for vq.pt, cont.pt, predictor.pt, correction.pt"),
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def pack(ctx: typer.Context) -> None:
    """Deterministic training pack for a GPU window: --out DIR [--seed S] [--mib N] (see --help)."""
    from .pack import main as pack_main

    pack_main(ctx.args)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
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
