"""Stage 2: the masked-token predictor, with the stage-1 models frozen.

Token maps and continuous guidance are precomputed once for random 256² training crops (the
expensive part) and cached next to the run; the transformer then trains on them quickly.
Masks mix MAGE-style random ratios (truncated Gaussian, mean 0.55, in [0.5, 1]) with the codec's
own structured schedules; the loss is cross-entropy on masked positions only. With probability
``guidance_dropout`` the guidance is zeroed, so one network also serves streams without it;
``--no-guidance`` trains the ablation that never sees it."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...runtime.masking import SCHEDULES, sent_mask
from .. import checkpoint
from ..data import ImageCache, data_root
from ..hyperprior import ContConfig, ContinuousCodec
from ..transformer import MaskedTokenPredictor, TransformerConfig
from ..vq import VQAutoencoder, VQConfig
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
class Stage2TrainConfig(RunConfig):
    steps: int = 3000
    batch: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    tiles: int = 3000
    structured_prob: float = 0.5
    guidance_dropout: float = 0.1
    use_guidance: bool = True
    use_codebook: bool = True  # sets TransformerConfig.code_dim from the VQ model
    val_every: int = 250
    init: str = ""  # a stage-2 checkpoint whose weights (and model config) start this run


def load_frozen(vq_ckpt: Path, cont_ckpt: Path) -> tuple[VQAutoencoder, ContinuousCodec]:
    return (checkpoint.load_model(vq_ckpt, VQAutoencoder, VQConfig),
            checkpoint.load_model(cont_ckpt, ContinuousCodec, ContConfig))


@torch.no_grad()
def tokens_and_guidance(vq: VQAutoencoder, cont: ContinuousCodec, tiles_u8: np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decoder will have for these tiles: VQ indices and decoded continuous guidance (computed on
    the models' device, returned on the CPU)."""
    x = to_tensor(tiles_u8, next(vq.parameters()).device)
    idx = vq.encode(x)
    low = cont.lowres(x)
    y, z = cont.analysis(low)
    mean, _ = cont.h_s(torch.round(z))
    g = cont.guidance(torch.round(y - mean) + mean)
    return idx.cpu(), g.cpu()


def build_cache(path: Path, vq: VQAutoencoder, cont: ContinuousCodec, n: int, cache_dir: Path,
                seed: int = 77, batch: int = 16, deadline: Deadline | None = None) -> None:
    """``deadline``: a time-boxed run stops adding tiles at half its budget (at least one batch); such a
    run's cache lives in its own work folder, so the file name's tile count is not relied on."""
    data = ImageCache(data_root() / "train", cache_dir)
    rng = np.random.default_rng(seed)
    toks, guid = [], []
    for _ in tqdm(range(0, n, batch), desc="stage2 cache"):
        if toks and deadline is not None and deadline.share_left() < 0.5:
            break
        idx, g = tokens_and_guidance(vq, cont, data.random_crops(rng, batch, 256))
        toks.append(idx.numpy().astype(np.int16))
        guid.append(g.numpy().astype(np.float16))
    np.savez(path, tokens=np.concatenate(toks)[:n], guidance=np.concatenate(guid)[:n])


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


def stage1_key(vq_ckpt: Path, cont_ckpt: Path) -> str:
    """Cache key: a hash of exactly what the cached tokens and guidance depend on (VQ encoder and
    codebook, continuous codec), so a decoder-only fine-tune of the VQ model reuses the caches."""
    h = hashlib.sha1()
    vq_state, cont_state = (checkpoint.load(p)["model"] for p in (vq_ckpt, cont_ckpt))
    parts = [(k, v) for k, v in vq_state.items() if not k.startswith("decoder.") and k != "quantizer.usage"]
    parts += sorted(cont_state.items())
    for k, v in parts:
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def train(run_dir: Path, cfg: Stage2TrainConfig, model_cfg: TransformerConfig, vq_ckpt: Path, cont_ckpt: Path,
          cache_dir: Path, cache_only: bool = False) -> None:
    deadline = Deadline(cfg.minutes, reserve_s(cfg.minutes))  # set-up and caches count too
    rng = seed_everything(cfg.seed, cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"stage2_tokens_{stage1_key(vq_ckpt, cont_ckpt)}_{cfg.tiles}.npz"
    vq, cont = load_frozen(vq_ckpt, cont_ckpt)
    if not cache.exists():
        build_cache(cache, vq.to(cfg.device), cont.to(cfg.device), cfg.tiles, cache_dir, deadline=deadline)
    if cache_only:
        return
    with np.load(cache) as f:
        tokens = torch.from_numpy(f["tokens"].astype(np.int64))
        guidance = torch.from_numpy(f["guidance"].astype(np.float32))
    # held-out crops of the *training* folder, only for the progress line (real evaluation: benchmarks/)
    n_val = min(max(64, len(tokens) // 20), len(tokens) // 2)
    start = checkpoint.load(Path(cfg.init)) if cfg.init else None
    if start is not None:  # the model's shape comes from the checkpoint
        model_cfg = checkpoint.to_config(TransformerConfig, start["config"])
    model_cfg.guidance_channels = guidance.shape[1]
    model_cfg.code_dim = vq.cfg.code_dim if cfg.use_codebook else 0
    model = MaskedTokenPredictor(model_cfg)
    if start is not None:
        model.load_state_dict(start["model"])
    if model_cfg.code_dim:  # after loading: the codebook of *this* VQ model
        model.set_codebook(vq.quantizer.normalised_codebook().detach())
    model.to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state = RunState(run_dir)
    if resume(state, cfg.seed, model=model, opt=opt):
        rng = resumed_rng(cfg.seed, state)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / cfg.steps))))
    for _ in range(state.step):
        sched.step()
    ckpt = Checkpointer(cfg.ckpt_minutes)

    def save() -> None:
        ckpt.save(state, model=model.state_dict(), opt=opt.state_dict(), config=model_cfg, train_config=cfg,
                  kind="predictor", vq_ckpt=str(vq_ckpt), cont_ckpt=str(cont_ckpt))

    bar = tqdm(total=cfg.steps, initial=state.step, desc="stage2", dynamic_ncols=True)
    stop = state.step >= cfg.steps or deadline.passed()
    with save_on_interrupt(save):
        while not stop:
            t0 = time.time()
            pick = torch.from_numpy(rng.integers(n_val, len(tokens), cfg.batch))
            idx, g = tokens[pick].to(cfg.device), guidance[pick].to(cfg.device)
            vis = torch.from_numpy(random_visible(rng, cfg.batch, model_cfg.grid, cfg.structured_prob)).to(cfg.device)
            if cfg.use_guidance:
                drop = torch.from_numpy(rng.random(cfg.batch) < cfg.guidance_dropout).to(cfg.device)
                g = torch.where(drop[:, None, None, None], torch.zeros_like(g), g)
            with autocast(cfg):
                hidden = model.hidden(idx, vis, g if cfg.use_guidance else None, compact=True)
                masked = ~vis.reshape(cfg.batch, -1)
                logits = model.logits(hidden[masked]).float()
            loss = F.cross_entropy(logits, idx.reshape(cfg.batch, -1)[masked])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            state.step += 1
            state.elapsed_s += time.time() - t0
            deadline.step_done(time.time() - t0)
            stop = state.step >= cfg.steps or deadline.passed()
            bar.update(1)
            bar.set_postfix(ce=f"{loss.item():.3f}")
            if state.step % 50 == 0:
                state.log({"ce": loss.item()})
            if state.step % cfg.val_every == 0 or stop:
                acc = held_out_accuracy(model, tokens[:n_val].to(cfg.device),
                                        guidance[:n_val].to(cfg.device) if cfg.use_guidance else None)
                state.log({"heldout_acc_1_4": acc})
                bar.write(f"step {state.step}: held-out token accuracy at 1_4 = {acc:.3f}")
            if ckpt.due() and not stop:
                save()
    bar.close()
    save()


@torch.no_grad()
def held_out_accuracy(model: MaskedTokenPredictor, tokens: torch.Tensor, guidance: torch.Tensor | None) -> float:
    model.eval()
    vis = torch.from_numpy(np.broadcast_to(sent_mask("1_4", model.cfg.grid), tokens.shape).copy()).to(tokens.device)
    pred = model.predict(tokens, vis, guidance)
    model.train()
    return float((pred == tokens)[~vis].float().mean())
