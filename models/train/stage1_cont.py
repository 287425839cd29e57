"""Stage 1b: the continuous hyperprior codec on 4×-downsampled crops.

Loss = rate (bits per *full-resolution* pixel) + λ·MSE(low-res). λ is steered by a slow
controller towards ``target_bpp`` so the run lands at the operating point we want (≈0.025 bpp)
instead of needing a λ sweep; the final λ is logged."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...runtime import metrics
from .. import checkpoint
from ..data import ImageCache, data_root, downscale, val_crops
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
class ContTrainConfig(RunConfig):
    steps: int = field(default=20000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=16, metadata={"help": "random crops per step"})
    crop: int = field(default=64, metadata={"help": "crop side in low-res pixels (× the model's downscale at "
                                                    "full resolution)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    lmbda: float = field(default=60.0, metadata={"help": "starting λ of the loss bpp + λ·MSE"})
    target_bpp: float = field(default=0.025, metadata={"help": "rate the λ controller steers to (bits per "
                                                               "full-resolution pixel)"})
    lmbda_rate: float = field(default=0.002, metadata={"help": "log-λ step per step of the rate controller "
                                                               "(0: fixed λ)"})
    val_every: int = field(default=1000, metadata={"help": "steps between validations on val images"})
    init: str = field(default="", metadata={"help": "stage1-cont checkpoint whose model starts this run (e.g. "
                                                    "split from the shipped model)", "must_exist": True})


def bpp_full(out: dict[str, torch.Tensor], lowres_pixels: int, downscale_by: int) -> torch.Tensor:
    bits = -(torch.log2(out["lik_y"]).sum() + torch.log2(out["lik_z"]).sum())
    return bits / (lowres_pixels * downscale_by**2)


@torch.no_grad()
def validate(model: ContinuousCodec, images: list[np.ndarray]) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    bpps, psnrs = [], []
    for img in images:
        lr = downscale(img, model.cfg.downscale)
        x = (to_tensor(lr[None], device) + 1) / 2
        out = model(x)
        bpps.append(bpp_full(out, lr.shape[0] * lr.shape[1], model.cfg.downscale).item())
        rec = (out["x_hat"].clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()
        psnrs.append(metrics.psnr(lr, rec))
    model.train()
    return {"val_bpp": float(np.mean(bpps)), "val_psnr_lowres": float(np.mean(psnrs))}


def train(run_dir: Path, cfg: ContTrainConfig, model_cfg: ContConfig, cache_dir: Path) -> None:
    deadline = Deadline(cfg.minutes, reserve_s(cfg.minutes))  # set-up and caches count too
    rng = seed_everything(cfg.seed, cfg.threads)
    state = RunState(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = ContinuousCodec(model_cfg)
    if cfg.init:
        model.load_state_dict(checkpoint.load(Path(cfg.init))["model"])
    model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    log_lmbda = math.log(cfg.lmbda)
    if ck := resume(state, cfg.seed, model=model, opt=opt):
        log_lmbda, rng = ck["log_lmbda"], resumed_rng(cfg.seed, state)
    data = ImageCache(data_root() / "train", cache_dir, downscale_by=model_cfg.downscale)
    images = val_crops(16, whole_tiles_only=True)
    ckpt = Checkpointer(cfg.ckpt_minutes)

    def save() -> None:
        ckpt.save(state, model=model.state_dict(), opt=opt.state_dict(), log_lmbda=log_lmbda,
                  config=model_cfg, train_config=cfg, kind="cont")

    bar = tqdm(total=cfg.steps, initial=state.step, desc="stage1-cont", dynamic_ncols=True)
    stop = state.step >= cfg.steps or deadline.passed()
    with save_on_interrupt(save):
        while not stop:
            t0 = time.time()
            x = (to_tensor(data.random_crops(rng, cfg.batch, cfg.crop), cfg.device) + 1) / 2
            with autocast(cfg):  # (burst keeps this stage in fp32: likelihoods are differences of CDFs)
                out = model(x)
            bpp = bpp_full(out, cfg.batch * cfg.crop**2, model_cfg.downscale)
            mse = F.mse_loss(out["x_hat"].float(), x)
            loss = bpp + math.exp(log_lmbda) * mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            # Rate controller: too many bits → lower λ, too few → raise it.
            log_lmbda -= cfg.lmbda_rate * float(np.clip((bpp.item() - cfg.target_bpp) / cfg.target_bpp, -1, 1))
            state.step += 1
            state.elapsed_s += time.time() - t0
            deadline.step_done(time.time() - t0)
            stop = state.step >= cfg.steps or deadline.passed()
            bar.update(1)
            psnr = 10 * math.log10(1 / max(mse.item(), 1e-10))
            bar.set_postfix(bpp=f"{bpp.item():.4f}", psnr_lr=f"{psnr:.2f}", lmbda=f"{math.exp(log_lmbda):.1f}")
            if state.step % 50 == 0:
                state.log({"bpp": bpp.item(), "psnr_lowres": psnr, "lmbda": math.exp(log_lmbda)})
            if state.step % cfg.val_every == 0 or stop:
                v = validate(model, images)
                state.log(v)
                bar.write(f"step {state.step}: {v}")
            if ckpt.due() and not stop:
                save()
    bar.close()
    save()
