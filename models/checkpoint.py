"""Checkpoints carry their config dataclasses, so a checkpoint file alone rebuilds its model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch


def save(path: Path, **payload: Any) -> None:
    """Atomic save; dataclass values are stored as plain dicts (with their type name)."""
    out = {}
    for k, v in payload.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out[k] = {"__dataclass__": type(v).__name__, **dataclasses.asdict(v)}
        else:
            out[k] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def to_config(cls: type, d: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
    return cls(**kwargs)


def build_model(ck: dict[str, Any], cls: type, cfg_cls: type) -> torch.nn.Module:
    """Rebuild a loaded run checkpoint's model from its own config, in eval mode."""
    model = cls(to_config(cfg_cls, ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def load_model(path: Path, cls: type, cfg_cls: type) -> torch.nn.Module:
    return build_model(load(path), cls, cfg_cls)


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 copy of a state dict for the small committed release checkpoint."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
