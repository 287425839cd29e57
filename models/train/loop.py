"""What every stage's training loop shares: run directory, resumable checkpoints, timing, logging."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint


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
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "elapsed_s": round(self.elapsed_s, 1), **record}) + "\n")


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def to_tensor(batch_u8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(batch_u8.copy()).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def resume(state: RunState, seed: int, **parts: Any) -> dict[str, Any] | None:
    """Load ``last.pt`` (if any) into ``parts`` (modules/optimisers by checkpoint key) and restore
    step, elapsed time and the torch RNG. Returns the checkpoint for stage-specific extras."""
    if not state.last.exists():
        return None
    ck = checkpoint.load(state.last)
    for key, obj in parts.items():
        obj.load_state_dict(ck[key])
    state.step, state.elapsed_s = ck["step"], ck["elapsed_s"]
    torch.manual_seed(seed + state.step)
    print(f"resumed {state.last} at step {state.step}")
    return ck


def resumed_rng(seed: int, state: RunState) -> np.random.Generator:
    """A fresh, reproducible stream per resume point (the crop sampler's state is not saved)."""
    return np.random.default_rng([seed, state.step])


@contextlib.contextmanager
def save_on_interrupt(save: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C, ``kill -INT`` or ``kill`` (TERM) saves a checkpoint before exiting, so stopping a run
    loses nothing. SIGINT is re-armed because a shell starts background jobs (``nohup … &``) with it
    ignored."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

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


class Checkpointer:
    """Saves every ``minutes`` of wall time (and on demand), so a killed run loses little."""

    def __init__(self, minutes: float):
        self.period = minutes * 60
        self.t_last = time.time()

    def due(self) -> bool:
        return time.time() - self.t_last >= self.period

    def save(self, state: RunState, **payload: Any) -> None:
        checkpoint.save(state.last, step=state.step, elapsed_s=state.elapsed_s, **payload)
        self.t_last = time.time()
