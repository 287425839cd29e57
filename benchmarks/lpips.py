"""LPIPS-Alex for the benchmarks: a NumPy-image front end to ``hybridflow.models.lpips``.

Why LPIPS: PSNR and MS-SSIM reward blur, which is exactly what a codec at < 0.05 bpp must trade
against; LPIPS-Alex is the perceptual number papers in this range report. One implementation lives in
``models/lpips.py`` (training uses its VGG variant); this module only adapts it to (H, W, 3) uint8
images and says in one line why it is skipped when torch or the weights are missing. The weights
folder is ``--lpips DIR``, else ``$HF_LPIPS_WEIGHTS``, else ``../shared/weights/lpips``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

ENV = "HF_LPIPS_WEIGHTS"
ALEXNET_FILE = "alexnet-features.pth"
LINEAR_FILE = "alex.pth"
SKIP_NOTE = "LPIPS-Alex skipped"

Lpips = Callable[[np.ndarray, np.ndarray], float]


def load(path: str | Path | None = None) -> Lpips:
    """LPIPS-Alex from ``path`` (default: see the module docstring); the returned function takes two
    (H, W, 3) uint8 images of the same size and returns their distance (0 = identical)."""
    from hybridflow.models.lpips import LPIPS

    return LPIPS("alex", folder=Path(path) if path else None).distance


def maybe_load(path: str | Path | None = None) -> Lpips | None:
    """``load(path)``, or None after printing one line saying what is missing."""
    try:
        from hybridflow.models.lpips import available, weights_dir
    except ImportError:
        print(f"{SKIP_NOTE}: torch is not installed (pip install -e .[train])", flush=True)
        return None
    folder = Path(path) if path else weights_dir()
    if not available("alex", folder):
        print(f"{SKIP_NOTE}: {folder} lacks {ALEXNET_FILE} or {LINEAR_FILE} (set {ENV} or --lpips)", flush=True)
        return None
    return load(folder)
