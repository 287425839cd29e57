"""Stage 2: the masked-token predictor, with the stage-1 models frozen.

Token maps and continuous guidance are precomputed once for random training tiles (the expensive
part, ``tile_cache.py``); the transformer then trains on them quickly.
Masks mix MAGE-style random ratios (truncated Gaussian, mean 0.55, in [0.5, 1]) with the codec's
own structured schedules; the loss is cross-entropy on masked positions only. With probability
``guidance_dropout`` the guidance is zeroed, so one network also serves streams without it;
``--no-guidance`` trains the ablation that never sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.masking import SCHEDULES, sent_mask
from .. import checkpoint
from ..transformer import MaskedTokenPredictor, TransformerConfig
from . import tile_cache
from .loop import Numbers, Run, RunConfig, autocast, compiled


@dataclass
class Stage2TrainConfig(RunConfig):
    steps: int = field(default=3000, metadata={"help": "steps to train (a resumed run goes on to this one)"})
    batch: int = field(default=16, metadata={"help": "token maps per step"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate (warm-up, then cosine to 0)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    tiles: int = field(default=3000, metadata={"help": "random training tiles in the token/guidance cache"})
    structured_prob: float = field(default=0.5, metadata={"help": "share of batches masked with one of the "
                                                                  "codec's schedules (the rest: random ratios)"})
    guidance_dropout: float = field(default=0.1, metadata={"help": "share of maps trained without guidance"})
    use_guidance: bool = field(default=True, metadata={"flag": "guidance", "help": "--no-guidance trains the "
                                                       "ablation without cross-attention"})
    use_codebook: bool = field(default=True, metadata={"flag": "codebook", "help": "embed and score tokens "
                                                       "through the VQ codebook vectors"})
    val_every: int = field(default=250, metadata={"help": "steps between held-out accuracy checks"})
    init: str = field(default="", metadata={"help": "stage-2 checkpoint whose weights (and model config) start "
                                                    "this run", "must_exist": True})


def new_model_config() -> TransformerConfig:
    """The predictor a new run trains unless told otherwise: it also adds the aligned guidance to each
    decoder position (``TransformerConfig``'s own default stays off, which is what checkpoints written
    before that option existed were trained with)."""
    return TransformerConfig(guidance_input=True)


def random_visible(rng: np.random.Generator, n: int, grid: int, structured_prob: float) -> np.ndarray:
    """One batch of visibility masks. A batch shares its kind (one structured schedule, or one
    random masking ratio with a different random pattern per tile) so that every tile has about
    the same number of visible tokens: the compact encoder then wastes nothing on padding."""
    structured = [s for s in SCHEDULES if s != "none"]
    if rng.random() < structured_prob:
        return np.broadcast_to(sent_mask(structured[rng.integers(len(structured))], grid), (n, grid, grid)).copy()
    ratio = float(np.clip(rng.normal(0.55, 0.25), 0.5, 1.0))
    n_masked = int(round(ratio * grid * grid))
    flat = np.ones((n, grid * grid), bool)
    for k in range(n):
        flat[k, rng.permutation(grid * grid)[:n_masked]] = False
    return flat.reshape(n, grid, grid)


def train(run_dir: Path, cfg: Stage2TrainConfig, model_cfg: TransformerConfig, vq_ckpt: Path, cont_ckpt: Path,
          cache_dir: Path, cache_only: bool = False) -> None:
    run = Run(run_dir, cfg)
    cache = tile_cache.cache_path(cache_dir, "stage2_tokens", vq_ckpt, cont_ckpt, cfg.tiles)
    vq, cont = tile_cache.load_frozen(vq_ckpt, cont_ckpt)
    if not cache.exists():
        tile_cache.build(cache, vq.to(cfg.device), cont.to(cfg.device), cfg.tiles, cache_dir, seed=77,
                         deadline=run.deadline)
    if cache_only:
        return
    cached = tile_cache.load(cache)
    tokens, guidance = cached.tokens, cached.guidance
    # held-out crops of the *training* folder, only for the progress line (real evaluation: benchmarks/)
    n_val = min(max(64, len(tokens) // 20), len(tokens) // 2)
    start = checkpoint.load(Path(cfg.init)) if cfg.init else None
    if start is not None:  # the model's shape comes from the checkpoint
        model_cfg = checkpoint.to_config(TransformerConfig, start["config"])
    # the fields the frozen models and the cached tiles decide (options.py: "derived")
    model_cfg.n_codes, model_cfg.grid = vq.cfg.n_codes, tokens.shape[-1]
    model_cfg.guidance_channels = guidance.shape[1]
    model_cfg.code_dim = vq.cfg.code_dim if cfg.use_codebook else 0
    model = MaskedTokenPredictor(model_cfg)
    if start is not None:
        model.load_state_dict(start["model"])
    if model_cfg.code_dim:  # after loading: the codebook of *this* VQ model
        model.set_codebook(vq.quantizer.normalised_codebook().detach())
    model.to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    run.resume(model=model, opt=opt, averaged=("model",))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / cfg.steps))))
    for _ in range(run.state.step):
        sched.step()

    run_hidden = compiled(cfg, model.hidden)

    def step() -> Numbers:
        rng = run.rng
        pick = torch.from_numpy(rng.integers(n_val, len(tokens), cfg.batch))
        idx, g = tokens[pick].to(cfg.device), guidance[pick].to(cfg.device)
        vis = torch.from_numpy(random_visible(rng, cfg.batch, model_cfg.grid, cfg.structured_prob)).to(cfg.device)
        if cfg.use_guidance:
            drop = torch.from_numpy(rng.random(cfg.batch) < cfg.guidance_dropout).to(cfg.device)
            g = torch.where(drop[:, None, None, None], torch.zeros_like(g), g)
        with autocast(cfg):
            hidden = run_hidden(idx, vis, g if cfg.use_guidance else None)
            masked = ~vis.reshape(cfg.batch, -1)
            logits = model.logits(hidden[masked]).float()
        loss = F.cross_entropy(logits, idx.reshape(cfg.batch, -1)[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"ce": loss.item()}

    def validate() -> Numbers:
        g = guidance[:n_val].to(cfg.device) if cfg.use_guidance else None
        return {"heldout_acc_1_4": held_out_accuracy(model, tokens[:n_val].to(cfg.device), g)}

    def save() -> None:
        run.save(model=model.state_dict(), opt=opt.state_dict(), config=model_cfg, train_config=cfg,
                 kind="predictor", vq_ckpt=str(vq_ckpt), cont_ckpt=str(cont_ckpt))

    run.loop("stage2", cfg.steps, step, save, validate, cfg.val_every)


@torch.no_grad()
def held_out_accuracy(model: MaskedTokenPredictor, tokens: torch.Tensor, guidance: torch.Tensor | None) -> float:
    model.eval()
    vis = torch.from_numpy(np.broadcast_to(sent_mask("1_4", model.cfg.grid), tokens.shape).copy()).to(tokens.device)
    pred = model.predict(tokens, vis, guidance)
    model.train()
    return float((pred == tokens)[~vis].float().mean())
