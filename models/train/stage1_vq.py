"""Stage 1a: the VQ autoencoder (discrete stream).

Loss = L1 + w_p·(1 − MS-SSIM + FFT-amplitude) [+ w_t·texture energy] + codebook/commitment + w_g·hinge
GAN (after ``disc_start`` steps). Dead codes are restarted from encoder outputs every ``restart_every`` steps.

With ``adaptive_gan`` the GAN weight is VQGAN's: w_g · ‖∇ rec-loss‖ / ‖∇ GAN-loss‖ at the decoder's last
layer, so the adversarial push stays commensurate with the reconstruction loss as both change.

``decoder_only`` fine-tunes the decoder of an ``init`` checkpoint (its discriminator too) with encoder
and codebook frozen: the token maps do not change, so a stage-2 predictor trained on them stays valid
while the decoder learns to draw sharper textures from the same indices."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...runtime import metrics
from .. import checkpoint
from ..data import ImageCache, data_root, val_crops
from ..discriminator import PatchDiscriminator
from ..losses import TEXTURE_MATCHES, adaptive_weight, hinge_d_loss, perceptual_loss, texture_energy_loss
from ..vq import VQAutoencoder, VQConfig
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor


@dataclass
class VQTrainConfig(RunConfig):
    steps: int = field(default=6000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=8, metadata={"help": "random crops per step"})
    crop: int = field(default=128, metadata={"help": "training crop side in pixels (the runtime decodes whole "
                                                     "tiles: larger crops train the decoder on its real context)"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate of generator and discriminator"})
    perceptual_weight: float = field(default=0.5, metadata={"help": "weight of the (1 − MS-SSIM) + FFT-amplitude "
                                                                    "term"})
    disc_start: int = field(default=2500, metadata={"help": "step at which the patch-GAN term starts (its "
                                                            "weight ramps up over 500 steps)"})
    disc_weight: float = field(default=0.1, metadata={"help": "weight of the GAN term"})
    restart_every: int = field(default=100, metadata={"help": "steps between dead-code restarts"})
    val_every: int = field(default=500, metadata={"help": "steps between validations on val crops"})
    texture_weight: float = field(default=0.0, metadata={"help": "weight of the local detail-energy loss "
                                                                 "(losses.texture_energy_loss)"})
    texture_match: str = field(default="rms", metadata={"help": "what that loss compares (losses.py)",
                                                        "choices": TEXTURE_MATCHES})
    adaptive_gan: bool = field(default=False, metadata={"help": "VQGAN's gradient-balanced GAN weight"})
    lr_decay: bool = field(default=False, metadata={"help": "generator LR falls linearly to 0 at --steps: ends a "
                                                            "GAN run in one state"})
    decoder_only: bool = field(default=False, metadata={"help": "freeze encoder and codebook: token maps stay as "
                                                                "in --init"})
    init: str = field(default="", metadata={"help": "stage1-vq checkpoint whose model (and discriminator) start "
                                                    "this run", "must_exist": True})


@torch.no_grad()
def validate(model: VQAutoencoder, images: list[np.ndarray]) -> dict[str, float]:
    """PSNR and code usage on tile-sized centre crops of ``val`` images."""
    model.eval()
    x = to_tensor(np.stack(images), next(model.parameters()).device)
    idx = model.encode(x)
    rec = model.decode(idx)
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    idx = idx.cpu()
    psnr = float(np.mean([metrics.psnr(a, b) for a, b in zip(images, rec_u8)]))
    sharp = float(np.mean([metrics.sharpness_ratio(b, a) for a, b in zip(images, rec_u8)]))
    counts = np.bincount(idx.flatten().numpy(), minlength=model.cfg.n_codes)
    model.train()
    return {"val_psnr": psnr, "val_sharpness": sharp, "val_codes_used": int((counts > 0).sum()),
            "val_perplexity": metrics.perplexity(counts)}


def train(run_dir: Path, cfg: VQTrainConfig, model_cfg: VQConfig, cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    model, disc = VQAutoencoder(model_cfg), PatchDiscriminator()
    if cfg.init:
        start = checkpoint.load(Path(cfg.init))
        model.load_state_dict(start["model"])
        if "disc" in start:  # a checkpoint split from a release bundle has no discriminator
            disc.load_state_dict(start["disc"])
    trained = model.decoder if cfg.decoder_only else model
    if cfg.decoder_only:
        for p in (*model.encoder.parameters(), *model.quantizer.parameters()):
            p.requires_grad_(False)
    model.to(cfg.device)
    disc.to(cfg.device)
    opt = torch.optim.Adam(trained.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    run.resume(model=model, disc=disc, opt=opt, opt_d=opt_d, averaged=("model",))
    data = ImageCache(data_root() / "train", cache_dir)
    tiles = val_crops(24)

    def generator_lr(step: int) -> float:
        """Warm-up over 200 steps; with ``lr_decay`` a linear fall to zero. A function of the step, so
        a resumed run continues on the same curve. With the GAN on, the decoder swings between a
        grainy and a smooth state from one validation to the next; decaying the rate lets it settle."""
        warm = min(1.0, (step + 1) / 200)
        return cfg.lr * warm * ((1 - step / cfg.steps) if cfg.lr_decay else 1.0)

    run_model, run_decoder, run_disc = compiled(cfg, model), compiled(cfg, model.decoder), compiled(cfg, disc)

    def step() -> Numbers:
        n = run.state.step  # steps done before this one
        x = to_tensor(data.random_crops(run.rng, cfg.batch, cfg.crop), cfg.device)
        with autocast(cfg):
            if cfg.decoder_only:
                with torch.no_grad():
                    z = model.encoder(x)
                    zq, _, qloss = model.quantizer(z)
                rec = run_decoder(zq)
            else:
                rec, _, qloss, z = run_model(x)
        # losses in fp32, outside autocast: MS-SSIM's E[x²] − μ² cancels catastrophically in bf16
        # (batch 32 from the shipped model: the loss reached −inf at step 4, then NaN weights)
        rec = rec.float()
        l1 = (rec - x).abs().mean()
        perc = perceptual_loss(rec, x)
        loss = l1 + cfg.perceptual_weight * perc
        if cfg.texture_weight:
            loss = loss + cfg.texture_weight * texture_energy_loss(rec, x, cfg.texture_match)
        gan_on = n >= cfg.disc_start
        w_gan = 0.0
        if gan_on:
            g_loss = -run_disc(rec).mean()
            w_gan = cfg.disc_weight * min(1.0, (n - cfg.disc_start) / 500)
            if cfg.adaptive_gan:
                w_gan = w_gan * adaptive_weight(loss, g_loss, model.decoder.last_layer.weight)
            loss = loss + w_gan * g_loss
        if not cfg.decoder_only:
            loss = loss + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = generator_lr(n)
        opt.step()
        if gan_on:
            with autocast(cfg):
                d_loss = hinge_d_loss(run_disc(x), run_disc(rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        restarted = 0
        if n % cfg.restart_every == 0 and n > 0 and not cfg.decoder_only:
            restarted = model.quantizer.restart_dead_codes(z.detach())
        return {"l1": l1.item(), "perc": perc.item(), "q": qloss.item(), "restarted": restarted,
                "w_gan": float(w_gan), "used": int((model.quantizer.usage > 0.03).sum())}

    def save() -> None:
        run.save(model=model.state_dict(), disc=disc.state_dict(), opt=opt.state_dict(), opt_d=opt_d.state_dict(),
                 config=model_cfg, train_config=cfg, kind="vq")

    run.loop("stage1-vq", cfg.steps, step, save, lambda: validate(model, tiles), cfg.val_every)
    print("done:", asdict(cfg))
