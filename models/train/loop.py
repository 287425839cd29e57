"""What every stage's training run shares: ``RunConfig`` (the base of every stage's config: seed,
threads, device, bf16, wall-clock budget, checkpoint period) and ``Run`` (the run folder, its
resumable ``last.pt``, seeding, the budget, and the one loop every stage runs around its own step)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import checkpoint


@dataclass
class RunConfig:
    """Fields every stage's training config shares; their defaults live here only."""

    ckpt_minutes: float = field(default=3.0, metadata={"help": "minutes of wall time between checkpoints"})
    seed: int = field(default=0, metadata={"help": "torch and crop-sampler seed"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"help": "cpu, or cuda: models and batches on the GPU"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast of the forward pass (this CPU has "
                                                       "avx512_bf16)"})
    minutes: float = field(default=0.0, metadata={"help": "wall-clock budget (0: none): the run stops in time to "
                                                          "validate and save"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the networks a step runs: stage 3 "
                                                           "1.6x faster on a 2-core CPU after about a minute of "
                                                           "compiling; small stages gain little or lose "
                                                           "(models/TRAINING.md)"})
    ema: float = field(default=0.0, metadata={"help": "> 0: the networks a run saves are an exponential moving "
                                                      "average of its weights with this decay (e.g. 0.999); "
                                                      "validation scores both (WeightAverage)"})


class Deadline:
    """When a run with a wall-clock budget must stop. A step is started only if one more step of the
    longest duration seen so far still ends before the deadline, so the run stops on time without a
    fixed safety margin; ``reserve_s`` is kept back for the final validation and checkpoint."""

    def __init__(self, minutes: float, reserve_s: float = 0.0):
        self.start = time.time()
        self.end = self.start + minutes * 60 - reserve_s if minutes > 0 else math.inf
        self.longest_step = 0.0

    def step_done(self, seconds: float) -> None:
        self.longest_step = max(self.longest_step, seconds)

    def passed(self) -> bool:
        return time.time() + self.longest_step >= self.end

    def left_s(self) -> float:
        return self.end - time.time()

    def share_left(self) -> float:
        """Share of the budget still ahead (1.0 without a budget): set-up work may stop early on it."""
        return 1.0 if math.isinf(self.end) else max(0.0, self.left_s()) / max(self.end - self.start, 1e-9)


def reserve_s(minutes: float) -> float:
    """Time kept back for the final validation and save: 10 % of a budget, at most 20 s."""
    return min(20.0, 6.0 * minutes)


def autocast(cfg: RunConfig, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast when the run asks for it (``cfg.bf16``) and the caller does (``enabled``)."""
    return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16 and enabled)


def compiled(cfg: RunConfig, module: torch.nn.Module) -> Callable[..., Any]:
    """What a step calls to run ``module``: the module itself, or with ``cfg.compile`` torch.compile's
    wrapper of it. The wrapper shares the module's parameters, so a stage keeps saving, loading and
    validating the plain module (validation at other shapes then compiles nothing). Why: on this 2-core
    CPU, eager PyTorch spends much of a small-batch step outside the convolutions; compiled, a stage-3
    step's forward and backward (pixel decoder + LPIPS-VGG, batch 8 × 128², bf16) took 0.47 instead
    of 0.73 s (models/TRAINING.md, session 27)."""
    return torch.compile(module) if cfg.compile else module


class WeightAverage:
    """An exponential moving average of some modules' weights (``RunConfig.ema``). Why: a fine-tune
    with a GAN term never settles: its weights wander from step to step around where the losses
    balance, and the val curve with them. The average over the last ≈ 1 / (1 − decay) steps is one
    point near the middle of that wander, at no cost per step but a copy of the weights.

    ``Run`` owns it: the modules hold the raw (trained) weights while steps run; every checkpoint is
    written with the average swapped in (so every file a stage writes — ``last.pt``, ``vq.pt``, … —
    carries the averaged networks that ``hf-train bundle`` takes) and the raw weights beside it under
    ``RAW_KEY``, which ``Run.resume`` swaps back for training to go on where it stopped."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.modules, self.decay = modules, decay
        self.shadow = {name: _copy(m) for name, m in modules.items()}

    def update(self, step: int) -> None:
        """Fold the modules' weights after step ``step`` (1-based) in. The decay ramps up as
        (1 + step) / (10 + step) to ``decay``, so the starting weights fade within the first steps
        of a short run, not over its whole length."""
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, m in self.modules.items():
                for key, value in m.state_dict().items():
                    avg = self.shadow[name][key]
                    if avg.is_floating_point():
                        avg.lerp_(value, 1.0 - d)
                    else:
                        avg.copy_(value)

    @contextlib.contextmanager
    def applied(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        """The modules hold the average inside the block (the raw weights, yielded, come back after)."""
        raw = {name: _copy(m) for name, m in self.modules.items()}
        for name, m in self.modules.items():
            m.load_state_dict(self.shadow[name])
        try:
            yield raw
        finally:
            for name, m in self.modules.items():
                m.load_state_dict(raw[name])

    def resume_raw(self, raw: dict[str, dict[str, torch.Tensor]]) -> None:
        """After a checkpoint's averaged weights were loaded into the modules: they become the average,
        and ``raw`` (the checkpoint's ``RAW_KEY``) goes back into the modules."""
        self.shadow = {name: _copy(m) for name, m in self.modules.items()}
        for name, m in self.modules.items():
            m.load_state_dict(raw[name])


RAW_KEY = "raw_weights"  # a checkpoint's trained weights while its networks hold the average (WeightAverage)


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class RunState:
    """Resumable state of one training run (``last.pt`` in its run directory)."""

    run_dir: Path
    step: int = 0
    elapsed_s: float = 0.0

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    def log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / LOG_NAME, "a") as f:
            f.write(json.dumps({"step": self.step, "elapsed_s": round(self.elapsed_s, 1), **record}) + "\n")


LOG_NAME = "log.jsonl"  # one JSON record per line: step numbers, validations (RunState.log writes them)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records ``RunState.log`` wrote in ``run_dir``, oldest first (none if it never logged): what
    the burst's summary and the tests read back, so the log's format has one owner."""
    path = run_dir / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def to_tensor(batch_u8: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1], on ``device`` (converted there: 4× less to copy)."""
    return torch.from_numpy(batch_u8.copy()).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@contextlib.contextmanager
def save_on_interrupt(save: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C, ``kill -INT`` or ``kill`` (TERM) saves a checkpoint before exiting, so stopping a run
    loses nothing. SIGINT is re-armed because a shell starts background jobs (``nohup … &``) with it
    ignored."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        save()
        print("\ninterrupted: checkpoint saved")
        raise SystemExit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


Numbers = dict[str, Any]  # what a step or a validation reports: name → number (or a short string)
LOG_EVERY = 50  # steps between records of a step's numbers in log.jsonl


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Run:
    """One stage's training run, all but the stage's own step: the run folder and its resumable
    ``last.pt``, seeds, the wall-clock budget, periodic checkpoints and the loop around ``step``.

    A stage makes ``Run(run_dir, cfg)`` first (it seeds torch, so the networks built next are
    reproducible, and starts the budget's clock: set-up and caches count too), builds its networks and
    optimisers, calls ``resume`` with them, then ``loop``. Its step draws crops from ``run.rng``."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        self.cfg = cfg
        self.deadline = Deadline(cfg.minutes, reserve_s(cfg.minutes))
        self.rng = seed_everything(cfg.seed, cfg.threads)
        self.state = RunState(run_dir)
        self.average: WeightAverage | None = None  # with cfg.ema, made by resume
        self._raw: dict[str, dict[str, torch.Tensor]] | None = None  # the raw weights while a save averages
        run_dir.mkdir(parents=True, exist_ok=True)
        self._saved_at = time.time()

    def resume(self, averaged: tuple[str, ...] = (), **parts: Any) -> dict[str, Any] | None:
        """Load ``last.pt`` (if any) into ``parts`` (modules and optimisers by checkpoint key), restore
        step and elapsed time, reseed torch, and give the crop sampler a fresh stream for this resume
        point (its state is not saved). Returns the checkpoint, for stage-specific extras.
        ``averaged``: the keys of the modules the run trains; with ``cfg.ema`` their weights are
        averaged (``WeightAverage``) from here on, or from the average the checkpoint saved."""
        state = self.state
        if self.cfg.ema:
            if not averaged:
                raise ValueError("--ema: this stage names no networks to average")
            self.average = WeightAverage({key: parts[key] for key in averaged}, self.cfg.ema)
        if not state.last.exists():
            return None
        ck = checkpoint.load(state.last)
        for key, obj in parts.items():
            obj.load_state_dict(ck[key])
        if self.average is not None:
            if RAW_KEY in ck:
                self.average.resume_raw(ck[RAW_KEY])
            else:  # a run that saved no average goes on averaging from its weights
                self.average = WeightAverage(self.average.modules, self.cfg.ema)
        state.step, state.elapsed_s = ck["step"], ck["elapsed_s"]
        torch.manual_seed(self.cfg.seed + state.step)
        self.rng = np.random.default_rng([self.cfg.seed, state.step])
        print(f"resumed {state.last} at step {state.step}")
        return ck

    def lr_share(self, decay: bool, steps: int) -> float:
        """The share of its base learning rate a step uses: with ``decay`` a linear fall from 1 at step 0
        to 0 at step ``steps`` (the run's end), else 1. A function of the step alone, so a resumed run (whose
        optimiser state brings back the LR it stopped at) continues the same schedule."""
        return max(0.0, 1.0 - self.state.step / max(steps, 1)) if decay else 1.0

    def save(self, **payload: Any) -> None:
        """``last.pt``: ``payload`` plus the step and the elapsed training time (and, while ``loop``
        saves the average, the raw weights)."""
        raw = {RAW_KEY: self._raw} if self._raw is not None else {}
        checkpoint.save(self.state.last, step=self.state.step, elapsed_s=self.state.elapsed_s, **payload, **raw)
        self._saved_at = time.time()

    def _averaged(self, save: Callable[[], None]) -> Callable[[], None]:
        """``save`` with the average in the networks (every file the stage writes holds it), or as is."""
        if self.cfg.ema == 0:
            return save
        if self.average is None:
            raise ValueError("--ema: the stage did not call Run.resume, which sets up the average")

        def averaged_save() -> None:
            with self.average.applied() as raw:
                self._raw = raw
                try:
                    save()
                finally:
                    self._raw = None

        return averaged_save

    def scores(self, validate: Callable[[], Numbers]) -> Numbers:
        """``validate``'s numbers; with an average, also its numbers on the average (``ema_`` names)."""
        scores = validate()
        if self.average is not None:
            with self.average.applied():
                scores |= {f"ema_{k}": v for k, v in validate().items()}
        return scores

    def loop(self, desc: str, steps: int, step: Callable[[], Numbers], save: Callable[[], None],
             validate: Callable[[], Numbers] | None = None, val_every: int = 0) -> None:
        """Call ``step`` until the run reaches ``steps`` or one more step would overrun the budget.
        Its numbers go on the progress bar and, every ``LOG_EVERY`` steps, into log.jsonl;
        ``validate``'s every ``val_every`` steps (0: never) and where the run stops. ``save`` (which
        calls ``self.save``) runs every ``ckpt_minutes``, at the end, and on Ctrl-C or ``kill``."""
        state, deadline = self.state, self.deadline
        save = self._averaged(save)
        self._saved_at = time.time()  # the checkpoint period counts from the first step, not the set-up
        bar = tqdm(total=steps, initial=state.step, desc=desc, dynamic_ncols=True)
        stop = state.step >= steps or deadline.passed()
        with save_on_interrupt(save):
            while not stop:
                t0 = time.time()
                numbers = step()
                state.step += 1
                state.elapsed_s += time.time() - t0
                deadline.step_done(time.time() - t0)
                if self.average is not None:
                    self.average.update(state.step)
                stop = state.step >= steps or deadline.passed()
                bar.update(1)
                bar.set_postfix({k: _short(v) for k, v in numbers.items()})
                if state.step % LOG_EVERY == 0:
                    state.log(numbers)
                if validate is not None and (stop or (val_every and state.step % val_every == 0)):
                    scores = self.scores(validate)
                    state.log(scores)
                    bar.write(f"step {state.step}: " + ", ".join(f"{k} {_short(v)}" for k, v in scores.items()))
                if time.time() - self._saved_at >= self.cfg.ckpt_minutes * 60 and not stop:
                    save()
        bar.close()
        save()
