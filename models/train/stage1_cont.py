"""Stage 1b: the continuous hyperprior codec on 4×-downsampled crops.

Loss = rate (bits per *full-resolution* pixel) + λ·MSE(low-res). λ is steered by a slow
controller towards ``target_bpp`` so the run lands at the operating point we want (≈0.025 bpp)
instead of needing a λ sweep; the final λ is logged.

``gains_only`` turns the same loop into the training of rate points (see models/hyperprior.py): every
network of ``init`` stays frozen and only the gain vectors of ``rate_points`` points are learnt, each
with its own fixed λ_k = base_lmbda · lmbda_step^(k − base_rate). Each batch is split evenly over the
points other than the base (whose gains stay exactly 1). An ``init`` with fewer points around the same
base is *extended*: its points keep their gains exactly (streams coded at them keep their meaning and
the ladder built on them stays valid) and only the added points, above its top, are learnt.

``encoder_only`` (session 14) fine-tunes the encoder side of ``init``'s codec — analysis, hyper
networks and prior — for the picture the runtime actually shows: full-resolution crops, distortion
measured after the frozen synthesis and learned ×4 up-sampling (the low-res MSE the codec was first
trained on is only a proxy for it). The decoder side does not move, so the guidance that the
predictor, the pixel decoder and the fusion read keeps its meaning; streams change, so the other rate
points' gains are re-learnt afterwards (``--gains-only --init RUN/last.pt``).

``context_only`` (session 24) gives ``init``'s frozen codec a channel-wise context (models/context.py) —
or goes on training the one it has — and trains only that: loss bpp + λ_k·MSE at every rate point
(sample i at point i mod K, λ_k as for gains-only; ``context_points`` narrows or weights the points), the MSE because
the context also moves the quantisation offsets μ'. Every stream's symbols change, nothing the decoders
read changes meaning."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...runtime import metrics
from .. import checkpoint
from ..data import ImageCache, data_root, downscale, val_crops
from ..hyperprior import GAIN_BITS, ContConfig, ContinuousCodec
from .loop import Numbers, Run, RunConfig, autocast, compiled, to_tensor


@dataclass
class ContTrainConfig(RunConfig):
    steps: int = field(default=20000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=16, metadata={"help": "random crops per step"})
    crop: int = field(default=64, metadata={"help": "crop side in low-res pixels (× the model's downscale at "
                                                    "full resolution)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    lr_decay: bool = field(default=False, metadata={"help": "LR falls linearly to 0 at --steps (a resumed run "
                                                            "joins the schedule at its step)"})
    lmbda: float = field(default=60.0, metadata={"help": "starting λ of the loss bpp + λ·MSE"})
    target_bpp: float = field(default=0.025, metadata={"help": "rate the λ controller steers to (bits per "
                                                               "full-resolution pixel)"})
    lmbda_rate: float = field(default=0.002, metadata={"help": "log-λ step per step of the rate controller "
                                                               "(0: fixed λ)"})
    val_every: int = field(default=1000, metadata={"help": "steps between validations on val images"})
    init: str = field(default="", metadata={"help": "stage1-cont checkpoint whose model starts this run (e.g. "
                                                    "split from the shipped model)", "must_exist": True})
    # rate points (Cui et al. 2021): the number of points and the base are the model config's
    # (--rate-points, --base-rate)
    gains_only: bool = field(default=False, metadata={"help": "train only the rate points' gain vectors of "
                                                              "--init's frozen codec (every network stays as it is)"})
    base_lmbda: float = field(default=6.0, metadata={"help": "gains-only: λ of the base point (the shipped codec "
                                                             "ended its training at λ ≈ 6)"})
    lmbda_step: float = field(default=2.5, metadata={"help": "gains-only: λ ratio between neighbouring points"})
    gain_step: float = field(default=1.6, metadata={"help": "gains-only: initial gain ratio between neighbouring "
                                                            "points (a fresh start; --init's own gains if it has "
                                                            "the same points)"})
    gain_lr: float = field(default=0.01, metadata={"help": "gains-only: Adam learning rate of the log-gains"})
    encoder_only: bool = field(default=False, metadata={"help": "train only the encoder side of --init's codec "
                                                                "for its full-resolution picture (see above)"})
    context_only: bool = field(default=False, metadata={"help": "train only a channel-wise context for --init's "
                                                                "frozen codec (--context-slices; see above)"})
    context_points: str = field(default="", metadata={"help": "context-only: the rate points it trains at, e.g. "
                                                              "'2,3,4'; a point named k times gets k shares of each "
                                                              "batch, e.g. '3,3,3,0,1,2,4,5,6,7,8' (default: all, "
                                                              "equally; default streams use the base)"})


class RatePoints(nn.Module):
    """The trainable part of a gains-only run: log-gains and log-inverse-gains of every rate point.
    ``store`` writes them, rounded onto the runtime's grid, into the codec's integer buffers."""

    def __init__(self, codec: ContinuousCodec, base_lmbda: float, lmbda_step: float, gain_step: float,
                 kept: int = 0, learn: bool = True):
        """``kept``: the first points are an earlier model's, never trained here (their gains get no
        gradient, so Adam leaves them exactly as they are); the points above them start from the top
        kept point's gains times ``gain_step`` per point. ``learn`` False: the codec's own gains, fixed,
        and every point (the base too) takes its share of a batch: a context-only run's loss."""
        super().__init__()
        k, base = codec.cfg.rate_points, codec.cfg.base_rate
        offsets = torch.arange(k, dtype=torch.float32) - base
        gain, inv_gain = (g.float() / (1 << GAIN_BITS) for g in (codec.rate_gain, codec.rate_inv_gain))
        if kept:  # an extension: the new points continue the top kept one geometrically
            steps = (torch.arange(k) - (kept - 1)).clamp_min(0).float()[:, None]
            gain = torch.where(steps > 0, gain[kept - 1] * gain_step**steps, gain)
            inv_gain = torch.where(steps > 0, inv_gain[kept - 1] / gain_step**steps, inv_gain)
        elif bool((gain == 1).all()):  # a fresh set of points: geometric start
            gain = (gain_step ** offsets)[:, None].expand_as(gain)
            inv_gain = 1 / gain
        self.log_gain = nn.Parameter(gain.log().clone())
        self.log_inv_gain = nn.Parameter(inv_gain.log().clone())
        self.register_buffer("lmbdas", base_lmbda * lmbda_step**offsets)
        self.trained = torch.tensor([p for p in range(kept, k) if p != base or not learn])
        self.requires_grad_(learn)

    def gains(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_gain[points].exp(), self.log_inv_gain[points].exp()

    def loss(self, codec: ContinuousCodec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean over the batch of bpp + λ_k·MSE, sample i at point ``trained[i mod len(trained)]``.
        Returns (loss, per-sample bpp, per-sample MSE)."""
        points = self.trained[torch.arange(len(x)) % len(self.trained)].to(x.device)
        out = codec(x, gains=self.gains(points))
        bits = -(torch.log2(out["lik_y"]).sum((1, 2, 3)) + torch.log2(out["lik_z"]).sum((1, 2, 3)))
        bpp = bits / (x.shape[2] * x.shape[3] * codec.cfg.downscale**2)
        mse = ((out["x_hat"].float() - x) ** 2).mean((1, 2, 3))
        return (bpp + self.lmbdas[points] * mse).mean(), bpp, mse

    def store(self, codec: ContinuousCodec) -> None:
        codec.set_rate_gains(self.log_gain.exp(), self.log_inv_gain.exp())


def bpp_full(out: dict[str, torch.Tensor], lowres_pixels: int, downscale_by: int) -> torch.Tensor:
    bits = -(torch.log2(out["lik_y"]).sum() + torch.log2(out["lik_z"]).sum())
    return bits / (lowres_pixels * downscale_by**2)


@torch.no_grad()
def validate(model: ContinuousCodec, images: list[np.ndarray], rate: int | None = None) -> dict[str, float]:
    """Mean bpp (likelihoods) and low-res PSNR at rate point ``rate`` (None: the base point); with a
    learned up-sampling also the full-resolution PSNR (what continuous-only decoding shows)."""
    model.eval()
    device = next(model.parameters()).device
    gains = None if rate is None else model.rate_gains(rate)
    bpps, psnrs, full = [], [], []
    for img in images:
        lr = downscale(img, model.cfg.downscale)
        x = (to_tensor(lr[None], device) + 1) / 2
        out = model(x, gains)
        bpps.append(bpp_full(out, lr.shape[0] * lr.shape[1], model.cfg.downscale).item())
        psnrs.append(metrics.psnr(lr, to_u8(out["x_hat"])))
        if model.upsampler is not None:
            full.append(metrics.psnr(img, to_u8(model.full_resolution(out["g"]))))
    model.train()
    return {"val_bpp": float(np.mean(bpps)), "val_psnr_lowres": float(np.mean(psnrs))} | (
        {"val_psnr_full": float(np.mean(full))} if full else {})


def to_u8(x: torch.Tensor) -> np.ndarray:
    """One image in [0, 1] (1, 3, H, W) → H×W×3 uint8, rounded as the runtime rounds."""
    return (x.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()


def validate_points(model: ContinuousCodec, images: list[np.ndarray]) -> dict[str, list[float]]:
    """``validate`` at every rate point, as lists in point order."""
    per_point = [validate(model, images, k) for k in range(model.cfg.rate_points)]
    return {key: [round(v[key], 5) for v in per_point] for key in per_point[0]}


def _gains_model(cfg: ContTrainConfig, model_cfg: ContConfig) -> tuple[ContinuousCodec, ContConfig, int]:
    """--init's codec, frozen, with ``model_cfg``'s rate points (--rate-points, --base-rate; every other
    model field is --init's): its own gains if it has the same points; if it has fewer points around the
    same base, its gains for those (the returned count of kept points, which stay frozen); else fresh ones
    (all 1, which ``RatePoints`` replaces by a geometric start)."""
    if not cfg.init:
        raise ValueError("--gains-only trains the rate points of an existing codec: give --init")
    if model_cfg.rate_points < 2:
        raise ValueError("--gains-only needs --rate-points ≥ 2 (and --base-rate, the point with gain 1)")
    ck = checkpoint.load(Path(cfg.init))
    init_cfg = checkpoint.to_config(ContConfig, ck["config"])
    points = {"rate_points": model_cfg.rate_points, "base_rate": model_cfg.base_rate}
    model_cfg = dataclasses.replace(init_cfg, **points)
    model = ContinuousCodec(model_cfg)
    weights = ck["model"]
    kept = 0
    if (init_cfg.rate_points, init_cfg.base_rate) != (model_cfg.rate_points, model_cfg.base_rate):
        old = {k: weights.pop(k) for k in ("rate_gain", "rate_inv_gain") if k in weights}
        if old and init_cfg.base_rate == model_cfg.base_rate and init_cfg.rate_points < model_cfg.rate_points:
            kept = init_cfg.rate_points
            for name, value in old.items():
                getattr(model, name)[:kept] = value
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"rate_gain", "rate_inv_gain"}:
        raise ValueError(f"{cfg.init}: not a stage1-cont checkpoint of this codec (missing {missing}, "
                         f"unexpected {unexpected})")
    return model.requires_grad_(False), model_cfg, kept


def _encoder_model(cfg: ContTrainConfig) -> tuple[ContinuousCodec, ContConfig]:
    """--init's codec (its own config: the command line's model fields are ignored) with the decoder
    side — synthesis and learned up-sampling — frozen."""
    if not cfg.init:
        raise ValueError("--encoder-only fine-tunes an existing codec: give --init")
    model = checkpoint.load_model(Path(cfg.init), ContinuousCodec, ContConfig)
    if model.upsampler is None:
        raise ValueError(f"{cfg.init}: --encoder-only needs a codec with a learned up-sampling (hf-train upsampler)")
    for part in (model.g_s_head, model.g_s_tail, model.upsampler):
        part.requires_grad_(False)
    return model, model.cfg


def _points(text: str, count: int) -> torch.Tensor:
    """'2,3,4' → tensor([2, 3, 4]), each a rate point of a codec with ``count`` of them; repeats are kept
    (sample i of a batch trains at entry i mod n, so a point named twice gets twice the share)."""
    try:
        points = sorted(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--context-points must be comma-separated point numbers, not {text!r}") from None
    if not points or points[0] < 0 or points[-1] >= count:
        raise ValueError(f"--context-points {text!r}: the codec has points 0…{count - 1}")
    return torch.tensor(points)


def _context_model(cfg: ContTrainConfig, model_cfg: ContConfig) -> tuple[ContinuousCodec, ContConfig]:
    """--init's codec, frozen, with its context (if it has one) or a fresh one of the command line's
    --context-slices / --context-hidden / --context-kernel, which alone trains."""
    if not cfg.init:
        raise ValueError("--context-only trains a context for an existing codec: give --init")
    model = checkpoint.load_model(Path(cfg.init), ContinuousCodec, ContConfig).requires_grad_(False)
    if model.context is None:
        if not model_cfg.context_slices:
            raise ValueError("--context-only needs --context-slices (slices of y) for a codec without one")
        model.add_context(model_cfg.context_slices, model_cfg.context_hidden, model_cfg.context_kernel)
    model.context.requires_grad_(True)
    return model, model.cfg


def train(run_dir: Path, cfg: ContTrainConfig, model_cfg: ContConfig, cache_dir: Path) -> None:
    run = Run(run_dir, cfg)
    rates: RatePoints | None = None
    if cfg.gains_only:
        model, model_cfg, kept = _gains_model(cfg, model_cfg)
        rates = RatePoints(model, cfg.base_lmbda, cfg.lmbda_step, cfg.gain_step, kept).to(cfg.device)
    elif cfg.encoder_only:
        model, model_cfg = _encoder_model(cfg)
    elif cfg.context_only:
        model, model_cfg = _context_model(cfg, model_cfg)
        rates = RatePoints(model, cfg.base_lmbda, cfg.lmbda_step, cfg.gain_step, learn=False).to(cfg.device)
        if cfg.context_points:
            rates.trained = _points(cfg.context_points, model_cfg.rate_points)
    else:
        model = ContinuousCodec(model_cfg)
        if cfg.init:
            model.load_state_dict(checkpoint.load(Path(cfg.init))["model"])
    model.to(cfg.device)
    trained = [p for p in (rates if cfg.gains_only else model).parameters() if p.requires_grad]
    base_lr = cfg.gain_lr if cfg.gains_only else cfg.lr
    opt = torch.optim.Adam(trained, lr=base_lr)
    log_lmbda = math.log(cfg.lmbda)
    if ck := run.resume(model=model, opt=opt, averaged=("model",), **({"rates": rates} if cfg.gains_only else {})):
        log_lmbda = ck["log_lmbda"]
    ds = model_cfg.downscale
    data = ImageCache(data_root() / "train", cache_dir, downscale_by=1 if cfg.encoder_only else ds)
    images = val_crops(16, whole_tiles_only=True)

    run_model = compiled(cfg, model)

    def step() -> Numbers:
        nonlocal log_lmbda
        for group in opt.param_groups:
            group["lr"] = base_lr * run.lr_share(cfg.lr_decay, cfg.steps)
        if cfg.encoder_only:  # full-resolution crops, down-sampled as the runtime does
            full = data.random_crops(run.rng, cfg.batch, cfg.crop * ds)
            x = (to_tensor(np.stack([downscale(c, ds) for c in full]), cfg.device) + 1) / 2
        else:
            x = (to_tensor(data.random_crops(run.rng, cfg.batch, cfg.crop), cfg.device) + 1) / 2
        if rates is not None:  # gains only: no rate controller, each point has its fixed λ
            loss, bpps, mses = rates.loss(run_model, x)
            bpp, mse = bpps.mean(), mses.mean()
        else:
            if cfg.encoder_only:  # distortion of the full-resolution picture
                out = run_model(x)  # fp32: likelihoods are differences of CDFs
                with autocast(cfg):
                    rec = model.full_resolution(out["g"])
                target = (to_tensor(full, cfg.device) + 1) / 2
            else:
                with autocast(cfg):  # (burst keeps this stage in fp32: likelihoods are differences of CDFs)
                    out = run_model(x)
                rec, target = out["x_hat"], x
            bpp = bpp_full(out, cfg.batch * cfg.crop**2, ds)
            mse = F.mse_loss(rec.float(), target)
            loss = bpp + math.exp(log_lmbda) * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        psnr_key = "psnr_full" if cfg.encoder_only else "psnr_lowres"
        numbers = {"bpp": bpp.item(), psnr_key: 10 * math.log10(1 / max(mse.item(), 1e-10))}  # gains: means
        if rates is None:
            # Rate controller: too many bits → lower λ, too few → raise it.
            log_lmbda -= cfg.lmbda_rate * float(np.clip((bpp.item() - cfg.target_bpp) / cfg.target_bpp, -1, 1))
            numbers["lmbda"] = math.exp(log_lmbda)
        return numbers

    def save() -> None:
        extra = {}
        if cfg.gains_only:
            rates.store(model)
            extra["rates"] = rates.state_dict()
        run.save(model=model.state_dict(), opt=opt.state_dict(), log_lmbda=log_lmbda, config=model_cfg,
                 train_config=cfg, kind="cont", **extra)

    def validation() -> Numbers:
        if rates is None:
            return validate(model, images)
        if cfg.gains_only:
            rates.store(model)
        return validate_points(model, images)

    if cfg.init and run.state.step == 0:
        run.state.log(validation())  # where a run from an existing codec starts
    run.loop("stage1-cont", cfg.steps, step, save, validation, cfg.val_every)
