"""Stage 1b: the continuous hyperprior codec on 4×-downsampled crops.

Loss = rate (bits per *full-resolution* pixel) + λ·MSE(low-res). λ is steered by a slow
controller towards ``target_bpp`` so the run lands at the operating point we want (≈0.025 bpp)
instead of needing a λ sweep; the final λ is logged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime import metrics
from .. import checkpoint
from ..data import ImageCache, data_root, downscale, val_crops
from ..hyperprior import ContConfig, ContinuousCodec
from .loop import Numbers, Run, RunConfig, autocast, to_tensor


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
    run = Run(run_dir, cfg)
    model = ContinuousCodec(model_cfg)
    if cfg.init:
        model.load_state_dict(checkpoint.load(Path(cfg.init))["model"])
    model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    log_lmbda = math.log(cfg.lmbda)
    if ck := run.resume(model=model, opt=opt):
        log_lmbda = ck["log_lmbda"]
    data = ImageCache(data_root() / "train", cache_dir, downscale_by=model_cfg.downscale)
    images = val_crops(16, whole_tiles_only=True)

    def step() -> Numbers:
        nonlocal log_lmbda
        x = (to_tensor(data.random_crops(run.rng, cfg.batch, cfg.crop), cfg.device) + 1) / 2
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
        return {"bpp": bpp.item(), "psnr_lowres": 10 * math.log10(1 / max(mse.item(), 1e-10)),
                "lmbda": math.exp(log_lmbda)}

    def save() -> None:
        run.save(model=model.state_dict(), opt=opt.state_dict(), log_lmbda=log_lmbda, config=model_cfg,
                 train_config=cfg, kind="cont")

    run.loop("stage1-cont", cfg.steps, step, save, lambda: validate(model, images), cfg.val_every)
