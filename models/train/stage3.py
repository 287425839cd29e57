"""Stage 3: the correction network, with VQ autoencoder, continuous codec and predictor frozen.

Each step draws cached training tiles, masks their token maps with one of the codec's schedules,
lets the frozen predictor restore them (so the correction learns to fix prediction errors too),
crops a random window of ``crop_tokens``² tokens (and the matching pixels and guidance) and trains
L1 + w·(1 − MS-SSIM + FFT-amplitude) [+ w_t·texture energy] through the VQ decoder with the
correction features added.

With ``disc_weight`` > 0 a patch discriminator judges the fused decoder's output against the original
(hinge loss, VQGAN's gradient-balanced weight): pixel losses make the correction average over what the
continuous latent cannot say, which is blur; the discriminator asks for texture that looks real there
instead. It can start from a stage1-vq checkpoint's discriminator (``disc_init``), which has already
learned what this VQ decoder's textures look like next to real ones.

Since session 8 the stage can also fine-tune the whole pixel decoder (``train_vq_decoder``): the VQ
decoder and the correction together, with LPIPS-VGG (``lpips_weight``, models/lpips.py) next to L1,
optionally converting both decoders to position-wise normalisation first (``decoder_norm="channel"``,
seamless by construction, see layers.ChannelNorm). A share of the steps (``plain_share``) trains the VQ
decoder alone on full token maps, so the VQ-only stream keeps decoding well. ``bf16`` runs the forward
pass under bfloat16 autocast (avx512_bf16 on this CPU; CUDA too). Every ``val_every`` steps the fused
decoder is scored on ``val`` tiles (PSNR, LPIPS-Alex at schedule 1_4): the curve that decides."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...runtime import metrics
from ...runtime.masking import sent_mask
from .. import checkpoint
from ..correction import CorrectionNet, PixelDecoder
from ..data import ImageCache, data_root, val_crops
from ..discriminator import PatchDiscriminator
from ..losses import hinge_d_loss, perceptual_loss, texture_energy_loss
from ..lpips import LPIPS
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder
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
from .stage1_vq import adaptive_weight
from .stage2 import load_frozen, stage1_key, tokens_and_guidance


@dataclass
class Stage3TrainConfig(RunConfig):
    steps: int = 3000
    batch: int = 8
    crop_tokens: int = 8
    lr: float = 2e-4
    perceptual_weight: float = 0.5
    texture_weight: float = 0.0  # > 0 asks for the original's amount of local detail (sharpness), see losses.py
    texture_match: str = "rms"  # what that loss compares: "rms", "energy" or "oriented"
    tiles: int = 1500
    schedules: tuple[str, ...] = ("1_2", "1_4", "1_4", "1_9", "1_9", "1_16", "none")
    init: str = ""  # a stage-3 checkpoint to start from instead of a fresh copy of the VQ decoder
    disc_weight: float = 0.0  # > 0: adversarial term (× the gradient-balanced weight), see the docstring
    disc_init: str = ""  # a stage1-vq (or GAN stage-3) checkpoint whose discriminator starts this run
    disc_warmup: int = 100  # steps over which the adversarial weight ramps up from 0
    lr_decay: bool = False  # LR falls linearly to 0 at ``steps``: a GAN run ends in one state
    lpips_weight: float = 0.0  # LPIPS-VGG term (the perceptual training loss; LPIPS-Alex is only measured)
    lpips_layers: int = 5  # VGG taps of that term (a training pack carries only the first blocks' weights)
    train_vq_decoder: bool = False  # fine-tune the VQ decoder together with the correction
    plain_share: float = 0.0  # share of steps on the plain VQ decoder with full maps (needs train_vq_decoder)
    decoder_norm: str = ""  # "channel": convert both decoders to position-wise normalisation at the start
    val_every: int = 0  # steps between validation scores (0: none)
    val_tiles: int = 24


def with_decoder_norm(vq: VQAutoencoder, kind: str) -> VQAutoencoder:
    """The same weights in a VQ model whose decoders use normalisation ``kind`` (same parameter names)."""
    if not kind or kind == vq.cfg.decoder_norm:
        return vq
    new = VQAutoencoder(dataclasses.replace(vq.cfg, decoder_norm=kind))
    new.load_state_dict(vq.state_dict())
    return new.eval()


@torch.no_grad()
def validate(decoder: PixelDecoder, predictor: MaskedTokenPredictor, tiles: np.ndarray, tokens: torch.Tensor,
             guidance: torch.Tensor, lpips_alex: LPIPS) -> dict[str, float]:
    """Fused decoder on whole val tiles at schedule 1_4: mean PSNR and LPIPS-Alex (never trained on)."""
    decoder.eval()
    device = next(decoder.parameters()).device
    tokens, guidance = tokens.to(device), guidance.to(device)
    vis = torch.from_numpy(np.broadcast_to(sent_mask("1_4"), tokens.shape).copy()).to(device)
    psnr, lp = [], []
    for s in range(0, len(tiles), 8):
        idx = predictor.predict(tokens[s : s + 8], vis[s : s + 8], guidance[s : s + 8])
        out = decoder(idx, guidance[s : s + 8]).clamp(-1, 1)
        target = to_tensor(tiles[s : s + 8], device)
        lp += lpips_alex(out, target).tolist()
        rec = ((out + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        psnr += [metrics.psnr(a, b) for a, b in zip(tiles[s : s + 8], rec)]
    decoder.train()
    return {"val_psnr": float(np.mean(psnr)), "val_lpips_alex": float(np.mean(lp))}


def train(run_dir: Path, cfg: Stage3TrainConfig, vq_ckpt: Path, cont_ckpt: Path, predictor_ckpt: Path,
          cache_dir: Path) -> None:
    deadline = Deadline(cfg.minutes, reserve_s(cfg.minutes))  # set-up and caches count too
    rng = seed_everything(cfg.seed, cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    vq, cont = load_frozen(vq_ckpt, cont_ckpt)
    vq = with_decoder_norm(vq, cfg.decoder_norm)
    predictor = checkpoint.load_model(predictor_ckpt, MaskedTokenPredictor, TransformerConfig)
    for m in (vq, cont, predictor):
        m.to(cfg.device)
    cache = cache_dir / f"stage3_tiles_{stage1_key(vq_ckpt, cont_ckpt)}_{cfg.tiles}.npz"
    if not cache.exists():
        data = ImageCache(data_root() / "train", cache_dir)
        tiles = data.random_crops(np.random.default_rng(99), cfg.tiles, 256)
        toks, guid = [], []
        for s in range(0, len(tiles), 16):  # a time-boxed run stops at half its budget (see stage2.build_cache)
            if toks and deadline.share_left() < 0.5:
                break
            idx, g = tokens_and_guidance(vq, cont, tiles[s : s + 16])
            toks.append(idx)
            guid.append(g)
        tiles = tiles[: 16 * len(toks)]
        np.savez(cache, tiles=tiles, tokens=torch.cat(toks).numpy().astype(np.int16),
                 guidance=torch.cat(guid).numpy().astype(np.float16))
    with np.load(cache) as f:
        tiles, tokens = f["tiles"], torch.from_numpy(f["tokens"].astype(np.int64))
        guidance = torch.from_numpy(f["guidance"].astype(np.float32))
    for p in (*vq.parameters(), *cont.parameters(), *predictor.parameters()):
        p.requires_grad_(False)
    correction = CorrectionNet(vq.cfg, cont.cfg.channels)
    if cfg.init:  # e.g. the shipped correction, adapted to a fine-tuned VQ decoder
        correction.load_state_dict(checkpoint.load(Path(cfg.init))["model"])
    else:
        correction.init_from(vq.decoder)
    correction.to(cfg.device)
    decoder = PixelDecoder(vq, correction)
    trained = list(correction.parameters())
    if cfg.train_vq_decoder:
        vq.decoder.requires_grad_(True)
        trained += list(vq.decoder.parameters())
    gan = cfg.disc_weight > 0
    opt = torch.optim.Adam(trained, lr=cfg.lr, betas=(0.5, 0.9) if gan else (0.9, 0.999))
    disc = PatchDiscriminator().to(cfg.device)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    if gan and cfg.disc_init:
        disc.load_state_dict(checkpoint.load(Path(cfg.disc_init))["disc"])
    lpips_vgg = LPIPS("vgg", layers=cfg.lpips_layers).to(cfg.device) if cfg.lpips_weight else None
    val = None
    if cfg.val_every:
        val_tiles = np.stack(val_crops(cfg.val_tiles))
        val = (val_tiles, *tokens_and_guidance(vq, cont, val_tiles), LPIPS("alex").to(cfg.device))
    state = RunState(run_dir)
    parts = ({"model": correction, "opt": opt} | ({"vq_decoder": vq.decoder} if cfg.train_vq_decoder else {})
             | ({"disc": disc, "opt_d": opt_d} if gan else {}))
    if resume(state, cfg.seed, **parts):
        rng = resumed_rng(cfg.seed, state)
    ckpt = Checkpointer(cfg.ckpt_minutes)

    def save() -> None:
        extra = {"disc": disc.state_dict(), "opt_d": opt_d.state_dict()} if gan else {}
        if cfg.train_vq_decoder:
            extra["vq_decoder"] = vq.decoder.state_dict()
            # the fine-tuned VQ model as a stage1-vq checkpoint, for `hf-train bundle --vq`
            checkpoint.save(run_dir / "vq.pt", model=vq.state_dict(), config=vq.cfg, kind="vq", step=state.step,
                            from_ckpt=str(vq_ckpt))
        ckpt.save(state, model=correction.state_dict(), opt=opt.state_dict(), train_config=cfg, kind="correction",
                  vq_ckpt=str(vq_ckpt), cont_ckpt=str(cont_ckpt), predictor_ckpt=str(predictor_ckpt), **extra)

    if val is not None and state.step == 0 and deadline.share_left() > 0.5:
        state.log(validate(decoder, predictor, *val))  # the starting point of the val curve
    bar = tqdm(total=cfg.steps, initial=state.step, desc="stage3", dynamic_ncols=True)
    ct, px = cfg.crop_tokens, cfg.crop_tokens * vq.cfg.factor
    stop = state.step >= cfg.steps or deadline.passed()
    with save_on_interrupt(save):
        while not stop:
            t0 = time.time()
            pick = rng.integers(0, len(tiles), cfg.batch)
            idx, g = tokens[pick].to(cfg.device), guidance[pick].to(cfg.device)
            plain = cfg.train_vq_decoder and rng.random() < cfg.plain_share
            name = "none" if plain else cfg.schedules[rng.integers(len(cfg.schedules))]
            vis = torch.from_numpy(np.broadcast_to(sent_mask(name), idx.shape).copy()).to(cfg.device)
            with torch.no_grad():
                idx = predictor.predict(idx, vis, g) if name != "none" else idx
            oy, ox = (int(v) for v in rng.integers(0, 16 - ct + 1, 2))
            target = to_tensor(tiles[pick][:, oy * 16 : oy * 16 + px, ox * 16 : ox * 16 + px], cfg.device)
            crop_idx, crop_g = idx[:, oy : oy + ct, ox : ox + ct], g[:, :, oy : oy + ct, ox : ox + ct]
            with autocast(cfg):
                out = vq.decode(crop_idx) if plain else decoder(crop_idx, crop_g)
            out = out.float()
            l1 = (out - target).abs().mean()
            perc = perceptual_loss(out, target) if cfg.perceptual_weight else torch.zeros(())
            lp = torch.zeros(())
            if lpips_vgg is not None:
                with autocast(cfg):
                    lp = lpips_vgg(out, target).mean().float()
            tex = texture_energy_loss(out, target, cfg.texture_match) if cfg.texture_weight else torch.zeros(())
            loss = l1 + cfg.lpips_weight * lp + cfg.perceptual_weight * perc + cfg.texture_weight * tex
            w_gan = 0.0
            if gan:
                g_loss = -disc(out).mean()
                w_gan = cfg.disc_weight * min(1.0, state.step / cfg.disc_warmup) * adaptive_weight(loss, g_loss, out)
                loss = loss + w_gan * g_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = cfg.lr * ((1 - state.step / cfg.steps) if cfg.lr_decay else 1.0)
            opt.step()
            if gan:
                d_loss = hinge_d_loss(disc(target), disc(out.detach()))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            state.step += 1
            state.elapsed_s += time.time() - t0
            deadline.step_done(time.time() - t0)
            stop = state.step >= cfg.steps or deadline.passed()
            bar.update(1)
            bar.set_postfix(l1=f"{l1.item():.3f}", lpips=f"{lp.item():.3f}", perc=f"{perc.item():.3f}")
            if state.step % 50 == 0:
                state.log({"l1": l1.item(), "lpips_vgg": lp.item(), "perc": perc.item(), "texture": tex.item(),
                           "schedule": name, "w_gan": float(w_gan), "d_loss": d_loss.item() if gan else 0.0})
            if val is not None and (state.step % cfg.val_every == 0 or stop):
                scores = validate(decoder, predictor, *val)
                state.log(scores)
                bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            if ckpt.due() and not stop:
                save()
    bar.close()
    save()
