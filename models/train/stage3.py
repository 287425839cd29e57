"""Stage 3: the correction network, with VQ encoder, continuous codec and (by default) predictor frozen.

Each step draws cached training tiles, masks their token maps with one of the codec's schedules,
lets the frozen predictor restore them (so the correction learns to fix prediction errors too) —
since session 12 as the expected code vector at masked positions (``soft_codes``: the one-pass
prediction is right for about one masked token in eight, and the argmax's code drew confident wrong
content), crops a random window of ``crop_tokens``² tokens (and the matching pixels and guidance) and trains
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
pass under bfloat16 autocast (avx512_bf16 on this CPU; CUDA too).

Since session 13 the predictor can learn here too (``train_predictor``): the expected code is
differentiable in its logits, so the pixel loss reaches it, and it learns which *codes decode alike*
where cross-entropy only rewards the right index (a small ``ce_weight`` keeps it a distribution over
codes). On val this helped the old pixel decoder on its own (models/TRAINING.md, session 13).

Since session 14 the loss can be taken where the runtime shows the picture, after the fusion
(``fusion``: a ``hf-train fusion`` checkpoint, trained here too at ``fusion_lr``): the fusion already
brings the continuous picture's low frequencies, so the pixel decoder may spend itself on what the
continuous stream cannot say. The continuous picture is drawn from each whole tile's guidance (frozen
learned up-sampling, rounded to 8 bits as the runtime passes it) and cropped with the pixels.

Every ``val_every`` steps the fused decoder is scored on ``val`` tiles (PSNR, LPIPS-Alex at schedule
1_4): the curve that decides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime import metrics
from ...runtime.masking import sent_mask
from .. import checkpoint
from ..correction import CorrectionNet, PixelDecoder
from ..data import val_crops
from ..discriminator import PatchDiscriminator
from ..fusion import Fusion, FusionConfig
from ..hyperprior import ContinuousCodec
from ..layers import NORMS
from ..losses import TEXTURE_MATCHES, adaptive_weight, gan_ramp, hinge_d_loss, perceptual_loss, texture_energy_loss
from ..lpips import LPIPS
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder
from . import tile_cache
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor


@dataclass
class Stage3TrainConfig(RunConfig):
    steps: int = field(default=3000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=8, metadata={"help": "crops per step"})
    crop_tokens: int = field(default=8, metadata={"help": "training crop side in tokens (the tile's token grid: "
                                                          "whole tiles, as the runtime decodes them)"})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate"})
    perceptual_weight: float = field(default=0.5, metadata={"help": "weight of the (1 − MS-SSIM) + FFT-amplitude "
                                                                    "term"})
    texture_weight: float = field(default=0.0, metadata={"help": "> 0 asks for the original's amount of local "
                                                                 "detail (sharpness), see losses.py"})
    texture_match: str = field(default="rms", metadata={"help": "what that loss compares (losses.py)",
                                                        "choices": TEXTURE_MATCHES})
    tiles: int = field(default=1500, metadata={"help": "random training tiles in the tile cache"})
    schedules: tuple[str, ...] = field(default=("1_2", "1_4", "1_4", "1_9", "1_9", "1_16", "none"),
                                       metadata={"help": "mask schedules drawn per step (repeats weigh more)"})
    init: str = field(default="", metadata={"help": "stage-3 checkpoint to start from instead of a fresh copy of "
                                                    "the VQ decoder", "must_exist": True})
    disc_weight: float = field(default=0.0, metadata={"help": "> 0 adds a patch-GAN term (gradient-balanced "
                                                              "weight × this), see the module docstring"})
    disc_init: str = field(default="", metadata={"help": "stage1-vq (or GAN stage-3) checkpoint whose "
                                                         "discriminator starts the GAN", "must_exist": True})
    disc_warmup: int = field(default=100, metadata={"help": "steps over which the GAN weight ramps up from 0 "
                                                             "(0: full weight at once)"})
    disc_lr: float = field(default=0.0, metadata={"help": "the discriminator's Adam learning rate (0: --lr); a "
                                                          "fresh one must learn faster than a fine-tuned decoder"})
    lr_decay: bool = field(default=False, metadata={"help": "LR falls linearly to 0 at --steps: a GAN run ends in "
                                                            "one state"})
    lpips_weight: float = field(default=0.0, metadata={"help": "weight of the LPIPS-VGG term (the perceptual "
                                                               "training loss; LPIPS-Alex is only measured)"})
    lpips_layers: int = field(default=5, metadata={"help": "VGG taps of that term (a training pack carries only "
                                                           "the first blocks' weights)"})
    correction_stages: int = field(default=0, metadata={"help": "up-sampling stages the correction feeds, coarsest "
                                                                "first (0: all; fewer decode faster, see "
                                                                "models/correction.py)"})
    train_vq_decoder: bool = field(default=False, metadata={"help": "fine-tune the VQ decoder together with the "
                                                                    "correction"})
    plain_share: float = field(default=0.0, metadata={"help": "share of steps on the plain VQ decoder with full "
                                                              "maps (needs --train-vq-decoder)"})
    decoder_norm: str = field(default="keep", metadata={"help": "'channel': convert both decoders to position-wise "
                                                                "normalisation first ('keep': the VQ model's)",
                                                        "choices": ("keep", *NORMS)})
    soft_codes: bool = field(default=True, metadata={"help": "masked positions carry the predictor's expected "
                                                            "code, not its argmax's (MaskedTokenPredictor.codes)"})
    train_predictor: bool = field(default=False, metadata={"help": "fine-tune the predictor too, through the "
                                                                  "expected codes (needs --soft-codes)"})
    predictor_lr: float = field(default=3e-5, metadata={"help": "its Adam learning rate (decays with --lr-decay)"})
    ce_weight: float = field(default=0.02, metadata={"help": "weight of a cross-entropy anchor on the masked "
                                                             "tokens while the predictor trains"})
    fusion: str = field(default="", metadata={"help": "fusion checkpoint (hf-train fusion): the loss is taken on "
                                                     "the fused picture and the fusion learns too (see above)",
                                             "must_exist": True})
    fusion_lr: float = field(default=3e-5, metadata={"help": "the fusion's Adam learning rate (decays with "
                                                             "--lr-decay)"})
    val_every: int = field(default=0, metadata={"help": "score the fused decoder on val tiles every N steps "
                                                        "(0: never)"})
    val_tiles: int = field(default=24, metadata={"help": "val tiles scored"})


def with_decoder_norm(vq: VQAutoencoder, kind: str) -> VQAutoencoder:
    """The same weights in a VQ model whose decoders use normalisation ``kind`` (same parameter names)."""
    if kind in ("", "keep", vq.cfg.decoder_norm):  # "": configs saved before "keep" existed
        return vq
    new = VQAutoencoder(dataclasses.replace(vq.cfg, decoder_norm=kind))
    new.load_state_dict(vq.state_dict())
    return new.eval()


def continuous_picture(cont: ContinuousCodec, g: torch.Tensor) -> torch.Tensor:
    """Whole tiles' guidance → the continuous stream's full-resolution picture in [−1, 1], on the 8-bit
    grid the runtime hands to the fusion."""
    with torch.no_grad():
        return (cont.full_resolution(g).clamp(0, 1) * 255).round() / 127.5 - 1


@torch.no_grad()
def validate(decoder: PixelDecoder, predictor: MaskedTokenPredictor, soft: bool, tiles: np.ndarray,
             tokens: torch.Tensor, guidance: torch.Tensor, lpips_alex: LPIPS,
             fused: tuple[Fusion, ContinuousCodec] | None = None) -> dict[str, float]:
    """Fused decoder on whole val tiles at schedule 1_4 (then the fusion with the continuous picture, if
    ``fused``): mean PSNR and LPIPS-Alex (never trained on)."""
    decoder.eval()
    device = next(decoder.parameters()).device
    tokens, guidance = tokens.to(device), guidance.to(device)
    book = decoder.vq.quantizer.normalised_codebook()
    vis = torch.from_numpy(np.broadcast_to(sent_mask("1_4", tokens.shape[-1]), tokens.shape).copy()).to(device)
    psnr, lp = [], []
    for s in range(0, len(tiles), 8):
        codes = predictor.codes(tokens[s : s + 8], vis[s : s + 8], guidance[s : s + 8], soft, book)
        out = decoder(codes, guidance[s : s + 8]).clamp(-1, 1)
        if fused is not None:
            fusion, cont = fused
            out = fusion(out, continuous_picture(cont, guidance[s : s + 8])).clamp(-1, 1)
        target = to_tensor(tiles[s : s + 8], device)
        lp += lpips_alex(out, target).tolist()
        rec = ((out + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        psnr += [metrics.psnr(a, b) for a, b in zip(tiles[s : s + 8], rec)]
    decoder.train()
    return {"val_psnr": float(np.mean(psnr)), "val_lpips_alex": float(np.mean(lp))}


def train(run_dir: Path, cfg: Stage3TrainConfig, vq_ckpt: Path, cont_ckpt: Path, predictor_ckpt: Path,
          cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    vq, cont = tile_cache.load_frozen(vq_ckpt, cont_ckpt)
    vq = with_decoder_norm(vq, cfg.decoder_norm)
    predictor = checkpoint.load_model(predictor_ckpt, MaskedTokenPredictor, TransformerConfig)
    for m in (vq, cont, predictor):
        m.to(cfg.device)
    cache = tile_cache.cache_path(cache_dir, "stage3_tiles", vq_ckpt, cont_ckpt, cfg.tiles)
    if not cache.exists():
        tile_cache.build(cache, vq, cont, cfg.tiles, cache_dir, seed=99, keep_tiles=True, deadline=run.deadline)
    cached = tile_cache.load(cache)
    tiles, tokens, guidance = cached.tiles, cached.tokens, cached.guidance
    for p in (*vq.parameters(), *cont.parameters(), *predictor.parameters()):
        p.requires_grad_(False)
    stages = cfg.correction_stages or None
    if cfg.init:  # e.g. the shipped correction, adapted to a fine-tuned VQ decoder (or its first stages)
        correction = CorrectionNet.from_state(vq.cfg, cont.cfg.channels, checkpoint.load(Path(cfg.init))["model"],
                                              stages)
    else:
        correction = CorrectionNet(vq.cfg, cont.cfg.channels, stages)
        correction.init_from(vq.decoder)
    correction.to(cfg.device)
    decoder = PixelDecoder(vq, correction)
    trained = list(correction.parameters())
    if cfg.train_vq_decoder:
        vq.decoder.requires_grad_(True)
        trained += list(vq.decoder.parameters())
    groups = [{"params": trained, "lr": cfg.lr}]
    if cfg.train_predictor:
        if not cfg.soft_codes:
            raise ValueError("--train-predictor needs --soft-codes: the argmax passes no gradient")
        predictor.requires_grad_(True)
        groups.append({"params": list(predictor.parameters()), "lr": cfg.predictor_lr})
    fusion = None
    if cfg.fusion:
        fusion = checkpoint.load_model(Path(cfg.fusion), Fusion, FusionConfig).to(cfg.device).train()
        groups.append({"params": list(fusion.parameters()), "lr": cfg.fusion_lr})
    base_lrs = [g["lr"] for g in groups]  # (what --lr-decay scales; resumed groups keep their saved LR)
    gan = cfg.disc_weight > 0
    opt = torch.optim.Adam(groups, betas=(0.5, 0.9) if gan else (0.9, 0.999))
    disc = PatchDiscriminator().to(cfg.device)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9))
    if gan and cfg.disc_init:
        disc.load_state_dict(checkpoint.load(Path(cfg.disc_init))["disc"])
    lpips_vgg = LPIPS("vgg", layers=cfg.lpips_layers).to(cfg.device) if cfg.lpips_weight else None
    val = None
    if cfg.val_every:
        val_tiles = np.stack(val_crops(cfg.val_tiles))
        val = (val_tiles, *tile_cache.tokens_and_guidance(vq, cont, val_tiles), LPIPS("alex").to(cfg.device))
    learning = ({"model": correction} | ({"vq_decoder": vq.decoder} if cfg.train_vq_decoder else {})
                | ({"predictor": predictor} if cfg.train_predictor else {})
                | ({"fusion": fusion} if fusion is not None else {}))
    run.resume(averaged=tuple(learning), opt=opt, **learning, **({"disc": disc, "opt_d": opt_d} if gan else {}))
    grid, token = tokens.shape[-1], vq.cfg.factor  # tokens per tile side, pixels per token
    ct, px = cfg.crop_tokens, cfg.crop_tokens * token
    # what the step runs (the plain modules stay what is saved and validated)
    run_decoder, run_plain, run_disc = compiled(cfg, decoder), compiled(cfg, vq.decoder), compiled(cfg, disc)
    run_fusion = compiled(cfg, fusion) if fusion is not None else None
    run_lpips = compiled(cfg, lpips_vgg) if lpips_vgg is not None else None

    def step() -> Numbers:
        rng = run.rng
        pick = rng.integers(0, len(tiles), cfg.batch)
        idx, g = tokens[pick].to(cfg.device), guidance[pick].to(cfg.device)
        plain = cfg.train_vq_decoder and rng.random() < cfg.plain_share
        name = "none" if plain else cfg.schedules[rng.integers(len(cfg.schedules))]
        vis = torch.from_numpy(np.broadcast_to(sent_mask(name, grid), idx.shape).copy()).to(cfg.device)
        ce = torch.zeros(())
        if name == "none":
            codes = vq.quantizer.lookup(idx)
        else:
            # autocast only while it trains: frozen, it gives the decoder the codes the runtime's fp32 graph gives
            with torch.set_grad_enabled(cfg.train_predictor), autocast(cfg, enabled=cfg.train_predictor):
                logits = predictor.logits(predictor.hidden(idx, vis, g))
                codes = predictor.code_image(logits, idx, vis, cfg.soft_codes, vq.quantizer.normalised_codebook())
            if cfg.train_predictor:
                masked = ~vis.reshape(len(idx), -1)
                ce = F.cross_entropy(logits[masked].float(), idx.reshape(len(idx), -1)[masked])
            codes = codes.float()
        oy, ox = (int(v) for v in rng.integers(0, grid - ct + 1, 2))
        y0, x0 = oy * token, ox * token
        target = to_tensor(tiles[pick][:, y0 : y0 + px, x0 : x0 + px], cfg.device)
        crop_codes, crop_g = codes[:, :, oy : oy + ct, ox : ox + ct], g[:, :, oy : oy + ct, ox : ox + ct]
        with autocast(cfg):
            out = run_plain(crop_codes) if plain else run_decoder(crop_codes, crop_g)
        if run_fusion is not None and not plain:  # the picture the runtime shows: fused with the continuous one
            cont_pic = continuous_picture(cont, g)[:, :, y0 : y0 + px, x0 : x0 + px]
            with autocast(cfg):
                out = run_fusion(out.clamp(-1, 1), cont_pic)
        out = out.float()
        l1 = (out - target).abs().mean()
        perc = perceptual_loss(out, target) if cfg.perceptual_weight else torch.zeros(())
        lp = torch.zeros(())
        if run_lpips is not None:
            with autocast(cfg):
                lp = run_lpips(out, target).mean().float()
        tex = texture_energy_loss(out, target, cfg.texture_match) if cfg.texture_weight else torch.zeros(())
        loss = l1 + cfg.lpips_weight * lp + cfg.perceptual_weight * perc + cfg.texture_weight * tex + cfg.ce_weight * ce
        w_gan = 0.0
        if gan:
            g_loss = -run_disc(out).mean()
            w_gan = cfg.disc_weight * gan_ramp(run.state.step, cfg.disc_warmup) * adaptive_weight(loss, g_loss, out)
            loss = loss + w_gan * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * run.lr_share(cfg.lr_decay, cfg.steps)
        opt.step()
        if gan:
            d_loss = hinge_d_loss(run_disc(target), run_disc(out.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        return {"l1": l1.item(), "lpips_vgg": lp.item(), "ce": ce.item(), "perc": perc.item(), "texture": tex.item(),
                "schedule": name, "w_gan": float(w_gan), "d_loss": d_loss.item() if gan else 0.0}

    def save() -> None:
        extra = {"disc": disc.state_dict(), "opt_d": opt_d.state_dict()} if gan else {}
        if cfg.train_vq_decoder:
            extra["vq_decoder"] = vq.decoder.state_dict()
            # the fine-tuned VQ model as a stage1-vq checkpoint, for `hf-train bundle --vq`
            checkpoint.save(run_dir / "vq.pt", model=vq.state_dict(), config=vq.cfg, kind="vq",
                            step=run.state.step, from_ckpt=str(vq_ckpt))
        if fusion is not None:
            extra["fusion"] = fusion.state_dict()
            # the fine-tuned fusion as a fusion checkpoint, for `hf-train bundle --fusion`
            checkpoint.save(run_dir / "fusion.pt", model=fusion.state_dict(), config=fusion.cfg, kind="fusion",
                            step=run.state.step, from_ckpt=cfg.fusion)
        if cfg.train_predictor:
            extra["predictor"] = predictor.state_dict()
            # the fine-tuned predictor as a stage2 checkpoint, for `hf-train bundle --predictor`
            checkpoint.save(run_dir / "predictor.pt", model=predictor.state_dict(), config=predictor.cfg,
                            kind="predictor", step=run.state.step, from_ckpt=str(predictor_ckpt))
        run.save(model=correction.state_dict(), opt=opt.state_dict(), train_config=cfg, kind="correction",
                 vq_ckpt=str(vq_ckpt), cont_ckpt=str(cont_ckpt), predictor_ckpt=str(predictor_ckpt), **extra)

    def validate_now() -> Numbers:
        return validate(decoder, predictor, cfg.soft_codes, *val,
                        fused=(fusion, cont) if fusion is not None else None)

    if val is not None and run.state.step == 0 and run.deadline.share_left() > 0.5:
        run.state.log(validate_now())  # the starting point of the val curve
    run.loop("stage3", cfg.steps, step, save, validate_now if val is not None else None, cfg.val_every)
