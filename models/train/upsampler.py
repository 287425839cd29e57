"""The continuous stream's learned ×4 up-sampling (models/upsampler.py), with the codec's symbols frozen.

Each step cuts random tile-sized training crops, runs the frozen continuous codec as the runtime does
(4× area-downsampling, analysis, rounded ẑ and ŷ, synthesis to the guidance ``g``), and trains the
upsampler to turn ``g`` into the full-resolution crop with MSE: the continuous-only stream is the
method's PSNR baseline ("beat 4×-down AVIF + bicubic"). The up-sampling shares the codec's synthesis tail
(guidance → low-res image), which learns with it, so the logged bicubic number moves too; the analysis,
the entropy model and the synthesis head (the guidance) do not, so streams, the
predictor and the pixel decoder stay as they are; the run's checkpoint is the codec *with* its
upsampler, which ``hf-train bundle --cont`` takes as is. Validation: centre tiles of ``val``,
PSNR of the learned up-sampling next to bicubic's (the number to beat)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.tiling import TILE
from .. import checkpoint
from ..data import ImageCache, data_root, val_crops
from ..hyperprior import ContConfig, ContinuousCodec
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor
from .tile_cache import guidance


@dataclass
class UpsamplerTrainConfig(RunConfig):
    steps: int = field(default=2000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=8, metadata={"help": "random crops per step"})
    crop: int = field(default=TILE, metadata={"help": "full-resolution training crop (a multiple of the "
                                                      "hyper-latent's stride)"})
    channels: int = field(default=64, metadata={"help": "upsampler features at ÷4 (ContConfig.upsampler)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    lr_decay: bool = field(default=True, metadata={"help": "LR falls linearly to 0 at --steps"})
    rate_share: float = field(default=0.0, metadata={"help": "share of the steps whose guidance comes from a random "
                                                            "other rate point of the codec (0: the base point only)"})
    init: str = field(default="", metadata={"help": "continuous checkpoint whose up-sampling this run starts from "
                                                   "(default: --cont's own)", "must_exist": True})
    val_every: int = field(default=250, metadata={"help": "score on val tiles every N steps"})
    val_tiles: int = field(default=24, metadata={"help": "val tiles scored"})


@torch.no_grad()
def validate(cont: ContinuousCodec, tiles: np.ndarray) -> dict[str, float]:
    """Mean PSNR (8-bit, per tile) of the learned and of the bicubic up-sampling on ``tiles``."""
    cont.eval()
    device = next(cont.parameters()).device
    out: dict[str, list[float]] = {"val_psnr": [], "val_psnr_bicubic": []}
    for s in range(0, len(tiles), 8):
        x = to_tensor(tiles[s : s + 8], device)
        g = guidance(cont, x)
        target = (x + 1) / 2
        for key, rec in (("val_psnr", cont.full_resolution(g)), ("val_psnr_bicubic", cont.bicubic(g))):
            q = (rec.clamp(0, 1) * 255).round() / 255
            mse = ((q - target) ** 2).mean(dim=(1, 2, 3))
            out[key] += (-10 * torch.log10(mse)).tolist()
    cont.upsampler.train()
    return {k: float(np.mean(v)) for k, v in out.items()}


def start_from(cont: ContinuousCodec, path: Path) -> None:
    """Give ``cont`` the up-sampling layers of another continuous checkpoint. Why: retraining the codec
    (``stage1-cont --init``) keeps the up-sampling it started with, while a newer one was trained since.
    The shared synthesis tail (``head``, ``to_low``) stays ``cont``'s own: it belongs to the codec."""
    other = checkpoint.load_model(path, ContinuousCodec, ContConfig).upsampler
    if other is None:
        raise SystemExit(f"{path}: this continuous checkpoint has no up-sampling")
    own = {k: v for k, v in other.state_dict().items() if not k.startswith(("head.", "to_low."))}
    mine = cont.upsampler.state_dict()
    if own.keys() != {k for k in mine if not k.startswith(("head.", "to_low."))} or \
            any(v.shape != mine[k].shape for k, v in own.items()):
        raise SystemExit(f"{path}: its up-sampling does not match this codec's ({cont.cfg.upsampler} channels)")
    cont.upsampler.load_state_dict(own, strict=False)


def train(run_dir: Path, cfg: UpsamplerTrainConfig, cont_ckpt: Path, cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    cont = checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig)
    if cont.upsampler is None:
        cont.add_upsampler(cfg.channels)
    if cfg.init:
        start_from(cont, Path(cfg.init))
    cont.requires_grad_(False)
    cont.upsampler.requires_grad_(True)
    cont.to(cfg.device).eval()
    cont.upsampler.train()
    opt = torch.optim.Adam(cont.upsampler.parameters(), lr=cfg.lr)
    run.resume(model=cont, opt=opt, averaged=("model",))
    data = ImageCache(data_root() / "train", cache_dir)
    val = np.stack(val_crops(cfg.val_tiles))

    others = [k for k in range(cont.cfg.rate_points) if k != cont.cfg.base_rate]  # what --rate-share draws from

    run_upsampler = compiled(cfg, cont.upsampler)

    def step() -> Numbers:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * run.lr_share(cfg.lr_decay, cfg.steps)
        x = to_tensor(data.random_crops(run.rng, cfg.batch, cfg.crop), cfg.device)
        if run.rng.random() < 0.5:
            x = x.flip(3)
        rate = int(run.rng.choice(others)) if others and run.rng.random() < cfg.rate_share else None
        g = guidance(cont, x, rate)
        with autocast(cfg):
            rec = run_upsampler(g)
        loss = F.mse_loss(rec.float(), (x + 1) / 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": loss.item(), "psnr": -10 * float(np.log10(max(loss.item(), 1e-10)))}

    def save() -> None:
        run.save(model=cont.state_dict(), opt=opt.state_dict(), config=cont.cfg, train_config=cfg, kind="cont")

    if run.state.step == 0:
        run.state.log(validate(cont, val))
    run.loop("upsampler", cfg.steps, step, save, lambda: validate(cont, val), cfg.val_every)
