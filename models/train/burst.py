"""``hf-train burst``: every stage in one time box, for a short GPU window (or a CPU dry run).

Stage 1 trains the VQ autoencoder and the continuous codec side by side (two threads: both are small,
and one alone leaves most of a GPU idle), then stage 2 and stage 3 run on their results, each stage
with its share of ``--minutes``. They are the ordinary stage trainers (``stage1_vq.train`` …) with a
``device`` and a wall-clock budget (``RunConfig.minutes``): a stage stops when one more step would
overrun, validates, and saves. Start: the shipped model's networks (the bundle derived from
``runtime/assets/default``), a model directory or bundle given with ``--init``, or ``--init scratch``.

What lands in ``--out`` (≤ 8 files, each ≤ 16 MiB): ``vq.pt``, ``cont.pt``, ``predictor.pt``,
``correction.pt`` (fp16 weights in the format the stages and ``hf-train bundle`` read) and
``burst_log.json`` (per stage: steps, images/s, wall time, validation). Run folders with the
optimiser states stay in ``--work``.

Runs without typer (``python -m hybridflow.models.train.burst``): a GPU machine has no network."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...runtime.tiling import TILE
from .options import parse

MIB = 1 << 20
OUT_FILES = ("vq.pt", "cont.pt", "predictor.pt", "correction.pt", "burst_log.json")


@dataclass
class BurstConfig:
    """Train all stages within a wall-clock budget (see models/train/burst.py)."""

    out: str = field(metadata={"help": "folder for the fp16 checkpoints and the log"})
    data: str = field(metadata={"help": "data root: a pack (hf-train pack) with train/ val/ [lpips/]"})
    minutes: float = field(default=8.0, metadata={"help": "wall-clock budget of the whole run"})
    device: str = field(default="cuda", metadata={"help": "cuda or cpu"})
    init: str = field(default="shipped", metadata={"help": "shipped | scratch | a model directory or bundle"})
    work: str = field(default="runs/burst", metadata={"help": "run folders and caches (replaced)"})
    stage1_share: float = field(default=0.4, metadata={"help": "share of the budget for stage 1 (both networks)"})
    stage2_share: float = field(default=0.2, metadata={"help": "share for stage 2 (stage 3 gets the rest)"})
    steps: int = field(default=1_000_000, metadata={"help": "step cap per stage (the budget normally stops it)"})
    vq_batch: int = field(default=32, metadata={"help": "stage1-vq batch (128² crops)"})
    cont_batch: int = field(default=64, metadata={"help": "stage1-cont batch (64² low-res crops)"})
    stage2_batch: int = field(default=64, metadata={"help": "stage-2 batch (token maps)"})
    stage3_batch: int = field(default=8, metadata={"help": "stage-3 batch (whole tiles)"})
    tiles: int = field(default=2000, metadata={"help": "training tiles cached for stages 2 and 3"})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast in stage1-vq, 2 and 3 (stage1-cont "
                                                       "stays fp32: its likelihoods are differences of CDFs)"})
    lpips_weight: float = field(default=1.0, metadata={"help": "stage 3: LPIPS-VGG weight (taps: the pack's VGG "
                                                               "blocks)"})
    stage3_vq_decoder: bool = field(default=True, metadata={"help": "stage 3 fine-tunes the VQ decoder too"})
    stage3_predictor: bool = field(default=True, metadata={"help": "stage 3 fine-tunes the predictor too, "
                                                                   "through its expected codes (session 13)"})
    plain_share: float = field(default=0.25, metadata={"help": "stage 3: share of steps on the plain VQ decoder"})
    val_every: int = field(default=500, metadata={"help": "steps between validations (each stage also validates "
                                                          "when it stops)"})
    threads: int = field(default=0, metadata={"help": "CPU threads per network (0: all cores, split in stage 1)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each stage's networks (about a minute of "
                                                           "compiling per stage; measured on the CPU only)"})
    toy: bool = field(default=False, metadata={"help": "tiny networks from scratch (tests; never for real numbers)"})


def _stage_minutes(cfg: BurstConfig, t0: float, share_end: float) -> float:
    """Minutes until the end of this stage's share of the budget, counted from the burst's start (so
    time a stage did not use goes to the next one), less a little for writing the outputs."""
    end = t0 + cfg.minutes * 60 * share_end - (5 if share_end >= 1 else 0)
    return max((end - time.time()) / 60, 1e-3)


def _start_checkpoints(cfg: BurstConfig, work: Path) -> dict[str, Path]:
    """Stage checkpoints to start from: split from the shipped model, a model dir or bundle; none from scratch."""
    if cfg.toy or cfg.init == "scratch":
        return {}
    from ...runtime.model import DEFAULT_MODEL_DIR
    from .release import split_bundle

    source = DEFAULT_MODEL_DIR if cfg.init == "shipped" else Path(cfg.init)
    return {p.stem: p for p in split_bundle(source, work / "init")}


def _model_configs(cfg: BurstConfig, start: dict[str, Path]) -> tuple[Any, Any, Any]:
    from .. import checkpoint
    from ..hyperprior import ContConfig
    from ..transformer import TransformerConfig
    from ..vq import VQConfig
    from . import stage2

    if cfg.toy:
        return (VQConfig(channels=(8, 8, 16, 16), bottleneck=16, code_dim=8, n_codes=64),
                ContConfig(channels=16, latent=16, hyper=8),
                TransformerConfig(dim=32, heads=2, enc_layers=1, dec_layers=1, n_codes=64, guidance_input=True))
    vq_cfg = checkpoint.to_config(VQConfig, checkpoint.load(start["vq"])["config"]) if "vq" in start else VQConfig()
    cont_cfg = (checkpoint.to_config(ContConfig, checkpoint.load(start["cont"])["config"]) if "cont" in start
                else ContConfig())
    return vq_cfg, cont_cfg, stage2.new_model_config()


def _summary(run_dir: Path, batch: int, wall_s: float) -> dict[str, Any]:
    """Steps, images/s and the last validation record of one stage's run folder."""
    from .. import checkpoint
    from .loop import read_log

    ck = checkpoint.load(run_dir / "last.pt")
    val: dict[str, Any] = {}
    for rec in read_log(run_dir):
        if any(k.startswith(("val", "heldout")) for k in rec):
            val = rec
    return {"steps": ck["step"], "train_s": round(ck["elapsed_s"], 1), "wall_s": round(wall_s, 1),
            "images_per_s": float(f"{ck['step'] * batch / max(ck['elapsed_s'], 1e-9):.3g}"), "batch": batch,
            "validation": val}


def _export_fp16(run_ckpt: Path, out: Path, kind: str, config: Any = None) -> int:
    """The trained weights only, fp16, in the format ``hf-train bundle`` and ``--init`` read."""
    from .. import checkpoint

    ck = checkpoint.load(run_ckpt)
    cfg = config if config is not None else ck.get("config")
    extra = {"config": cfg} if cfg is not None else {}
    checkpoint.save(out, model=checkpoint.half_state(ck["model"]), kind=kind, step=ck["step"],
                    from_burst=True, **extra)
    return out.stat().st_size


def run(cfg: BurstConfig) -> dict[str, Any]:
    import shutil

    import torch

    from .. import checkpoint
    from . import stage1_cont, stage1_vq, stage2, stage3

    t0 = time.time()
    os.environ["HF_DATA"] = str(Path(cfg.data).resolve())  # the stages read train/ and val/ from the data root
    if (Path(cfg.data) / "lpips").is_dir():
        os.environ["HF_LPIPS_WEIGHTS"] = str((Path(cfg.data) / "lpips").resolve())
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device here")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    work, out = Path(cfg.work), Path(cfg.out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    threads = cfg.threads or max(1, os.cpu_count() or 1)
    start = _start_checkpoints(cfg, work)
    vq_cfg, cont_cfg, tr_cfg = _model_configs(cfg, start)
    common = {"device": cfg.device, "steps": cfg.steps, "val_every": cfg.val_every, "ckpt_minutes": 1e9,
              "compile": cfg.compile}
    pack_info = Path(cfg.data) / "pack.json"
    vgg_blocks = json.loads(pack_info.read_text())["config"]["vgg_blocks"] if pack_info.exists() else 5
    log: dict[str, Any] = {"config": asdict(cfg), "init": {k: str(v) for k, v in start.items()},
                           "torch": torch.__version__,
                           "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
                           "stages": {}}

    # stage 1: both networks side by side
    t = time.time()
    minutes = _stage_minutes(cfg, t0, cfg.stage1_share)
    half = max(1, threads // 2)
    vq_train = stage1_vq.VQTrainConfig(**common, bf16=cfg.bf16, batch=cfg.vq_batch, disc_start=cfg.steps, threads=half,
                                       minutes=minutes, init=str(start.get("vq", "")))
    cont_train = stage1_cont.ContTrainConfig(**common, batch=cfg.cont_batch, threads=half, minutes=minutes,
                                             init=str(start.get("cont", "")))
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(stage1_vq.train, work / "vq", vq_train, vq_cfg, cache),
                pool.submit(stage1_cont.train, work / "cont", cont_train, cont_cfg, cache)]
        for job in jobs:
            job.result()
    wall = time.time() - t
    log["stages"]["stage1_vq"] = _summary(work / "vq", cfg.vq_batch, wall)
    log["stages"]["stage1_cont"] = _summary(work / "cont", cfg.cont_batch, wall)
    vq_ckpt, cont_ckpt = work / "vq" / "last.pt", work / "cont" / "last.pt"

    # stage 2
    t = time.time()
    s2 = stage2.Stage2TrainConfig(**common, bf16=cfg.bf16, batch=cfg.stage2_batch, tiles=cfg.tiles, threads=threads,
                                  minutes=_stage_minutes(cfg, t0, cfg.stage1_share + cfg.stage2_share),
                                  init=str(start.get("predictor", "")))
    stage2.train(work / "stage2", s2, tr_cfg, vq_ckpt, cont_ckpt, cache)
    log["stages"]["stage2"] = _summary(work / "stage2", cfg.stage2_batch, time.time() - t)

    # stage 3
    t = time.time()
    s3 = stage3.Stage3TrainConfig(**common, bf16=cfg.bf16, batch=cfg.stage3_batch,
                                  crop_tokens=8 if cfg.toy else TILE // vq_cfg.factor, tiles=cfg.tiles,
                                  threads=threads, minutes=_stage_minutes(cfg, t0, 1.0),
                                  init=str(start.get("correction", "")), lpips_weight=cfg.lpips_weight,
                                  lpips_layers=vgg_blocks, train_vq_decoder=cfg.stage3_vq_decoder,
                                  plain_share=cfg.plain_share if cfg.stage3_vq_decoder else 0.0,
                                  train_predictor=cfg.stage3_predictor)
    stage3.train(work / "stage3", s3, vq_ckpt, cont_ckpt, work / "stage2" / "last.pt", cache)
    log["stages"]["stage3"] = _summary(work / "stage3", cfg.stage3_batch, time.time() - t)

    if (work / "stage3" / "vq.pt").exists():  # stage 3 fine-tuned the VQ decoder: that is the VQ model now
        vq_ckpt = work / "stage3" / "vq.pt"
    predictor_ckpt = work / "stage3" / "predictor.pt"  # stage 3 fine-tuned the predictor too
    if not predictor_ckpt.exists():
        predictor_ckpt = work / "stage2" / "last.pt"
    sizes = {"vq.pt": _export_fp16(vq_ckpt, out / "vq.pt", "vq"),
             "cont.pt": _export_fp16(cont_ckpt, out / "cont.pt", "cont"),
             "predictor.pt": _export_fp16(predictor_ckpt, out / "predictor.pt", "predictor"),
             "correction.pt": _export_fp16(work / "stage3" / "last.pt", out / "correction.pt", "correction")}
    too_big = [f for f, n in sizes.items() if n > 16 * MIB]
    if too_big:
        raise RuntimeError(f"checkpoints over 16 MiB: {too_big}")
    log["files"] = sizes
    log["wall_s"] = round(time.time() - t0, 1)
    (out / "burst_log.json").write_text(json.dumps(log, indent=1, default=str) + "\n")
    checkpoint.load(out / "vq.pt")  # fail here, not on the CPU later, if a file did not come out whole
    return log


def main(argv: list[str] | None = None) -> None:
    cfg = parse(BurstConfig, argv, "hf-train burst")
    log = run(cfg)
    for name, s in log["stages"].items():
        print(f"{name:12s} {s['steps']:7d} steps  {s['images_per_s']:8.1f} img/s  {s['wall_s']:6.1f} s  "
              f"{ {k: v for k, v in s['validation'].items() if k not in ('step', 'elapsed_s')} }")
    print(f"burst done in {log['wall_s']:.1f} s → {cfg.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
