"""The decoder's light output stage (``VQConfig.output = "subpixel"``), distilled from the full one.

Why distillation: the full-resolution stage is a deterministic function of the half-resolution
features that reach it, and so is its replacement (layers.SubpixelOut, same receptive field). So
the new stage can learn the *old stage's* pictures, pixel for pixel, with L1 alone: no regression
to a blurry mean (the target is not the unknowable original but a function of the same input), no
LPIPS network to run, and every other network — the VQ decoder's coarser stages, the correction
network, the predictor, the fusion — stays exactly as trained, with the pictures they were tuned on.

Each step draws cached training tiles, makes the pixel decoder's input as stage 3 does (a mask
schedule and the frozen predictor's expected codes; a ``plain_share`` of full token maps through the
VQ decoder alone, the VQ-only stream), runs the frozen decoder to the last stage's input (bf16
autocast), and trains the new stage on the old stage's fp32 output from those same features.

Distillation alone leaves the new stage a little short of the old one's pictures where those are
hard to copy (fine texture: on val −0.06 dB and +0.007 LPIPS-Alex after 1000 steps at 35 dB from the old
pictures). So a second run (``init``: the first run's ``vq.pt``) can take the loss the old stage was
trained with, L1 and LPIPS-VGG against the original crop (``l1_weight``, ``lpips_weight``), with the
old pictures as a regulariser (``teacher_weight``).

The run writes ``vq.pt`` next to ``last.pt``: the VQ model with the new output stage (every other
weight the input's), for ``hf-train bundle --vq``. Validation: whole ``val`` tiles at 1_4 through the
pixel decoder, PSNR and LPIPS-Alex of the new decoder's pictures (and of the old one's at the start);
each step's ``psnr_vs_old`` says how alike the two stages' pictures are on the training crops."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.masking import sent_mask
from .. import checkpoint
from ..correction import CorrectionNet, PixelDecoder
from ..data import val_crops
from ..lpips import LPIPS
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder, VQConfig
from . import tile_cache
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor
from .stage3 import validate


@dataclass
class OutputTrainConfig(RunConfig):
    steps: int = field(default=3000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=16, metadata={"help": "crops per step"})
    crop_tokens: int = field(default=8, metadata={"help": "training crop side in tokens"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (falls linearly to 0 at --steps)"})
    tiles: int = field(default=1500, metadata={"help": "random training tiles in the tile cache"})
    schedules: tuple[str, ...] = field(default=("1_2", "1_4", "1_4", "1_9", "1_9", "1_16", "none"),
                                       metadata={"help": "mask schedules drawn per step (repeats weigh more)"})
    plain_share: float = field(default=0.2, metadata={"help": "share of steps on the plain VQ decoder with full "
                                                              "maps (the VQ-only stream)"})
    teacher_weight: float = field(default=1.0, metadata={"help": "weight of L1 to the old stage's picture"})
    l1_weight: float = field(default=0.0, metadata={"help": "weight of L1 to the original crop"})
    lpips_weight: float = field(default=0.0, metadata={"help": "weight of LPIPS-VGG to the original crop (the "
                                                               "perceptual loss; LPIPS-Alex is only measured)"})
    init: str = field(default="", metadata={"help": "stage1-vq checkpoint (this stage's vq.pt) whose subpixel output "
                                                    "starts the run", "must_exist": True})
    val_every: int = field(default=250, metadata={"help": "score on val tiles every N steps (0: at the end only)"})
    val_tiles: int = field(default=24, metadata={"help": "val tiles scored"})


def with_subpixel_output(vq: VQAutoencoder) -> VQAutoencoder:
    """A copy of ``vq`` whose decoder draws pixels with a new (untrained) SubpixelOut; every other weight
    is ``vq``'s. Its full-resolution stage and output layers are the only weights left behind."""
    new = VQAutoencoder(dataclasses.replace(vq.cfg, output="subpixel"))
    result = new.load_state_dict(vq.state_dict(), strict=False)
    last = len(new.decoder.ups)
    if any(not k.startswith("decoder.out.") for k in result.missing_keys) or any(
            not k.startswith((f"decoder.ups.{last}.", "decoder.norm_out.", "decoder.conv_out."))
            for k in result.unexpected_keys):
        raise ValueError(f"not a full-output VQ model: missing {result.missing_keys}, left {result.unexpected_keys}")
    return new


def train(run_dir: Path, cfg: OutputTrainConfig, vq_ckpt: Path, cont_ckpt: Path, predictor_ckpt: Path,
          correction_ckpt: Path, cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    teacher, cont = tile_cache.load_frozen(vq_ckpt, cont_ckpt)
    if teacher.cfg.output != "full":
        raise ValueError(f"{vq_ckpt}: its decoder already has a {teacher.cfg.output!r} output stage")
    predictor = checkpoint.load_model(predictor_ckpt, MaskedTokenPredictor, TransformerConfig)
    correction = CorrectionNet.from_state(teacher.cfg, cont.cfg.channels, checkpoint.load(correction_ckpt)["model"])
    student = with_subpixel_output(teacher)
    if cfg.init:  # a distilled stage, to fine-tune on the originals: every other weight must be the teacher's
        start = checkpoint.load_model(Path(cfg.init), VQAutoencoder, VQConfig)
        own = student.state_dict()
        if start.cfg.output != "subpixel" or any(not torch.equal(v, own[k]) for k, v in start.state_dict().items()
                                                 if not k.startswith("decoder.out.")):
            raise ValueError(f"{cfg.init}: not a subpixel output stage on {vq_ckpt}'s VQ model")
        student.decoder.out.load_state_dict(start.decoder.out.state_dict())
    for m in (teacher, cont, predictor, correction, student):
        m.to(cfg.device).eval().requires_grad_(False)
    out = student.decoder.out
    out.train().requires_grad_(True)
    opt = torch.optim.Adam(out.parameters(), lr=cfg.lr)
    run.resume(model=out, opt=opt, averaged=("model",))
    cache = tile_cache.cache_path(cache_dir, "stage3_tiles", vq_ckpt, cont_ckpt, cfg.tiles)
    if not cache.exists():
        tile_cache.build(cache, teacher, cont, cfg.tiles, cache_dir, seed=99, keep_tiles=True, deadline=run.deadline)
    cached = tile_cache.load(cache)
    tiles, tokens, guidance = cached.tiles, cached.tokens, cached.guidance
    lpips_vgg = LPIPS("vgg").to(cfg.device) if cfg.lpips_weight else None
    old, new = PixelDecoder(teacher, correction), PixelDecoder(student, correction)
    book = teacher.quantizer.normalised_codebook()
    grid, ct, token = tokens.shape[-1], cfg.crop_tokens, teacher.cfg.factor
    val_tiles = np.stack(val_crops(cfg.val_tiles))
    val = (val_tiles, *tile_cache.tokens_and_guidance(teacher, cont, val_tiles), LPIPS("alex").to(cfg.device))

    run_out = compiled(cfg, out)
    run_lpips = compiled(cfg, lpips_vgg) if lpips_vgg is not None else None

    def step() -> Numbers:
        rng = run.rng
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (1 - run.state.step / cfg.steps)
        pick = rng.integers(0, len(tokens), cfg.batch)
        idx, g = tokens[pick].to(cfg.device), guidance[pick].to(cfg.device)
        plain = rng.random() < cfg.plain_share
        name = "none" if plain else cfg.schedules[rng.integers(len(cfg.schedules))]
        oy, ox = (int(v) for v in rng.integers(0, grid - ct + 1, 2))
        with torch.no_grad(), autocast(cfg):
            if name == "none":
                codes = teacher.quantizer.lookup(idx)
            else:
                vis = torch.from_numpy(np.broadcast_to(sent_mask(name, grid), idx.shape).copy()).to(cfg.device)
                codes = predictor.codes(idx, vis, g, True, book)
            codes, g = codes[:, :, oy : oy + ct, ox : ox + ct].float(), g[:, :, oy : oy + ct, ox : ox + ct]
            h = teacher.decoder.head(codes) if plain else old.head(codes, g)
            for up in teacher.decoder.ups[0 if plain else old.stages : len(student.decoder.ups)]:
                h = up(h)
        h = h.float()
        with torch.no_grad():  # the old stage in fp32: the pictures the shipped graphs draw
            target = teacher.decoder.output(teacher.decoder.ups[-1](h))
        with autocast(cfg):
            pred = run_out(h)
        pred = pred.float()
        loss = cfg.teacher_weight * F.l1_loss(pred, target)
        if cfg.l1_weight or lpips_vgg is not None:
            y0, x0, px = oy * token, ox * token, ct * token
            original = to_tensor(tiles[pick][:, y0 : y0 + px, x0 : x0 + px], cfg.device)
            loss = loss + cfg.l1_weight * F.l1_loss(pred, original)
            if lpips_vgg is not None:
                with autocast(cfg):
                    loss = loss + cfg.lpips_weight * run_lpips(pred, original).mean().float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "schedule": name,
                "psnr_vs_old": -10 * float(np.log10(max(F.mse_loss(pred.detach(), target).item() / 4, 1e-12)))}

    def save() -> None:
        run.save(model=out.state_dict(), opt=opt.state_dict(), train_config=cfg, kind="output",
                 vq_ckpt=str(vq_ckpt), correction_ckpt=str(correction_ckpt))
        # the VQ model with the new output stage, a stage1-vq checkpoint for `hf-train bundle --vq`
        checkpoint.save(run_dir / "vq.pt", model=student.state_dict(), config=student.cfg, kind="vq",
                        step=run.state.step, from_ckpt=str(vq_ckpt))

    def validate_now() -> Numbers:  # (validate hands the decoder back in train mode, the new stage with it)
        return validate(new, predictor, True, *val)

    if run.state.step == 0:
        run.state.log({f"old_{k}": v for k, v in validate(old, predictor, True, *val).items()})
    run.loop("output", cfg.steps, step, save, validate_now, cfg.val_every)

