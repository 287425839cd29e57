"""The continuous stream's learned ×4 up-sampling (models/upsampler.py), with the codec frozen.

Each step cuts random 256² training crops, runs the frozen continuous codec as the runtime does
(4× area-downsampling, analysis, rounded ẑ and ŷ, synthesis to the guidance ``g``), and trains the
upsampler to turn ``g`` into the full-resolution crop with MSE: the continuous-only stream is the
method's PSNR baseline ("beat 4×-down AVIF + bicubic"). The symbols do not change, so streams, the
predictor and the pixel decoder stay as they are; the run's checkpoint is the codec *with* its
upsampler, which ``hf-train bundle --cont`` takes as is. Validation: centre 256² tiles of ``val``,
PSNR of the learned up-sampling next to bicubic's (the number to beat)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import checkpoint
from ..data import ImageCache, data_root, val_crops
from ..hyperprior import ContConfig, ContinuousCodec
from .loop import (
    Checkpointer,
    Deadline,
    RunConfig,
    RunState,
    autocast,
    reserve_s,
    resume,
    resumed_rng,
    save_on_interrupt,
    seed_everything,
    to_tensor,
)


@dataclass
class UpsamplerTrainConfig(RunConfig):
    steps: int = 2000
    batch: int = 8
    crop: int = field(default=256, metadata={"help": "full-resolution training crop"})
    channels: int = field(default=64, metadata={"help": "upsampler features at ÷4 (ContConfig.upsampler)"})
    lr: float = 5e-4
    lr_decay: bool = field(default=True, metadata={"help": "LR falls linearly to 0 at --steps"})
    val_every: int = field(default=250, metadata={"help": "score on val tiles every N steps"})
    val_tiles: int = 24


@torch.no_grad()
def guidance_of(cont: ContinuousCodec, x: torch.Tensor) -> torch.Tensor:
    """What the decoder has for full-resolution images ``x`` in [-1, 1]: the guidance from rounded symbols."""
    y, z = cont.analysis(cont.lowres(x))
    mean, _ = cont.h_s(torch.round(z))
    return cont.guidance(torch.round(y - mean) + mean)


@torch.no_grad()
def validate(cont: ContinuousCodec, tiles: np.ndarray) -> dict[str, float]:
    """Mean PSNR (8-bit, per tile) of the learned and of the bicubic up-sampling on ``tiles``."""
    cont.eval()
    device = next(cont.parameters()).device
    out: dict[str, list[float]] = {"val_psnr": [], "val_psnr_bicubic": []}
    for s in range(0, len(tiles), 8):
        x = to_tensor(tiles[s : s + 8], device)
        g = guidance_of(cont, x)
        target = (x + 1) / 2
        bicubic = F.interpolate(cont.reconstruct(g), scale_factor=float(cont.cfg.downscale), mode="bicubic",
                                align_corners=False)
        for key, rec in (("val_psnr", cont.full_resolution(g)), ("val_psnr_bicubic", bicubic)):
            q = (rec.clamp(0, 1) * 255).round() / 255
            mse = ((q - target) ** 2).mean(dim=(1, 2, 3))
            out[key] += (-10 * torch.log10(mse)).tolist()
    cont.upsampler.train()
    return {k: float(np.mean(v)) for k, v in out.items()}


def train(run_dir: Path, cfg: UpsamplerTrainConfig, cont_ckpt: Path, cache_dir: Path) -> None:
    deadline = Deadline(cfg.minutes, reserve_s(cfg.minutes))
    rng = seed_everything(cfg.seed, cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    cont = checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig)
    if cont.upsampler is None:
        cont.add_upsampler(cfg.channels)
    cont.requires_grad_(False)
    cont.upsampler.requires_grad_(True)
    cont.to(cfg.device).eval()
    cont.upsampler.train()
    opt = torch.optim.Adam(cont.upsampler.parameters(), lr=cfg.lr)
    state = RunState(run_dir)
    if resume(state, cfg.seed, model=cont, opt=opt):
        rng = resumed_rng(cfg.seed, state)
    data = ImageCache(data_root() / "train", cache_dir)
    val = np.stack(val_crops(cfg.val_tiles))
    ckpt = Checkpointer(cfg.ckpt_minutes)

    def save() -> None:
        ckpt.save(state, model=cont.state_dict(), opt=opt.state_dict(), config=cont.cfg, train_config=cfg,
                  kind="cont")

    if state.step == 0:
        state.log(validate(cont, val))
    bar = tqdm(total=cfg.steps, initial=state.step, desc="upsampler", dynamic_ncols=True)
    stop = state.step >= cfg.steps or deadline.passed()
    with save_on_interrupt(save):
        while not stop:
            t0 = time.time()
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (1 - state.step / cfg.steps if cfg.lr_decay else 1.0)
            x = to_tensor(data.random_crops(rng, cfg.batch, cfg.crop), cfg.device)
            if rng.random() < 0.5:
                x = x.flip(3)
            g = guidance_of(cont, x)
            with autocast(cfg):
                rec = cont.upsampler(g)
            loss = F.mse_loss(rec.float(), (x + 1) / 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step += 1
            state.elapsed_s += time.time() - t0
            deadline.step_done(time.time() - t0)
            stop = state.step >= cfg.steps or deadline.passed()
            bar.update(1)
            bar.set_postfix(psnr=f"{-10 * np.log10(max(loss.item(), 1e-10)):.2f}")
            if state.step % 50 == 0:
                state.log({"mse": loss.item()})
            if state.step % cfg.val_every == 0 or stop:
                v = validate(cont, val)
                state.log(v)
                bar.write(f"step {state.step}: val PSNR {v['val_psnr']:.3f} (bicubic {v['val_psnr_bicubic']:.3f})")
            if ckpt.due() and not stop:
                save()
    bar.close()
    save()

