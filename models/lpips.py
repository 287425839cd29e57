"""LPIPS (Zhang et al., CVPR 2018, v0.1) from the weight files in ``../shared/weights/lpips``.

Two uses, two networks, one implementation:
- **LPIPS-Alex is the yardstick**: every benchmark table and ``hf-run eval`` (when torch is there).
- **LPIPS-VGG is the training loss** (the VQGAN recipe), so the evaluation stays independent of
  what the networks were optimised for. Training may keep only the first ``layers`` VGG taps: the
  deeper blocks cost most of the time on a CPU and carry the least of the signal at 128² crops.

Recipe: inputs in [−1, 1]; the LPIPS scaling layer; ReLU taps of the backbone; each unit-normalised
over channels; squared difference; 1×1 linear head; spatial mean; sum over taps. Nothing is ever
downloaded: ``$HF_LPIPS_WEIGHTS`` (default ``../shared/weights/lpips`` next to the data) names the
folder (see its README for the files)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import data_root

ENV = "HF_LPIPS_WEIGHTS"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class Backbone:
    features_file: str
    heads_file: str
    convs: tuple[int, ...]  # indices in torchvision's ``features``
    taps: tuple[int, ...]  # convs whose ReLU output is an LPIPS tap
    channels: tuple[int, ...]  # channels of each tap


ALEX = Backbone("alexnet-features.pth", "alex.pth", (0, 3, 6, 8, 10), (0, 3, 6, 8, 10), (64, 192, 384, 256, 256))
VGG = Backbone("vgg16-features-fp16.pth", "vgg.pth", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
               (2, 7, 14, 21, 28), (64, 128, 256, 512, 512))
BACKBONES = {"alex": ALEX, "vgg": VGG}


def weights_dir() -> Path:
    return Path(os.environ.get(ENV, data_root().parent / "weights" / "lpips"))


def available(net: str = "alex", folder: Path | None = None) -> bool:
    b, folder = BACKBONES[net], folder or weights_dir()
    return (folder / b.features_file).is_file() and (folder / b.heads_file).is_file()


class LPIPS(nn.Module):
    """``LPIPS("alex")(x, y)`` → per-image distances, x and y (B, 3, H, W) in [−1, 1]. Frozen."""

    def __init__(self, net: str = "alex", layers: int = 5, folder: Path | None = None):
        super().__init__()
        b = BACKBONES[net]
        folder = folder or weights_dir()
        feats = torch.load(folder / b.features_file, map_location="cpu", weights_only=True)
        heads = torch.load(folder / b.heads_file, map_location="cpu", weights_only=True)
        self.net, self.backbone = net, b
        last_conv = b.taps[layers - 1]
        self.convs = nn.ModuleList()
        for i in (c for c in b.convs if c <= last_conv):
            w, bias = feats[f"features.{i}.weight"].float(), feats[f"features.{i}.bias"].float()
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=4 if (net == "alex" and i == 0) else 1,
                             padding=2 if (net == "alex" and i in (0, 3)) else 1)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(bias)
            self.convs.append(conv)
        self.conv_ids = [c for c in b.convs if c <= last_conv]
        self.heads = nn.ParameterList()
        for k, c in enumerate(b.channels[:layers]):
            key = next(key for key in heads if re.fullmatch(rf"lin{k}\.model\.\d+\.weight", key))
            if tuple(heads[key].shape) != (1, c, 1, 1):
                raise ValueError(f"{folder / b.heads_file}: lin{k} is not (1, {c}, 1, 1)")
            self.heads.append(nn.Parameter(heads[key].float(), requires_grad=False))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _pool_before(self, i: int) -> bool:
        if self.net == "alex":
            return i in (3, 6)
        return i in (5, 10, 17, 24)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, conv in zip(self.conv_ids, self.convs):
            if self._pool_before(i):
                x = F.max_pool2d(x, 3, 2) if self.net == "alex" else F.max_pool2d(x, 2, 2)
            x = F.relu(conv(x))
            if i in self.backbone.taps:
                out.append(x)
        return out

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Two (H, W, 3) uint8 images of one size → their distance (0 = identical)."""
        if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"LPIPS needs two RGB images of one size, got {a.shape} and {b.shape}")

        def as_tensor(rgb: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1

        with torch.inference_mode():
            return float(self(as_tensor(a), as_tensor(b))[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def unit(f: torch.Tensor) -> torch.Tensor:
            return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

        d = 0.0
        for fx, fy, w in zip(self.taps(x), self.taps(y), self.heads):
            d = d + ((unit(fx.float()) - unit(fy.float())) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
        return d
