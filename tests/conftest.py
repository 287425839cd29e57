"""Shared fixtures: a tiny randomly initialised model exported once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("HF_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridflow.models.bundle import save_bundle, tiny_components

    path = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    save_bundle(path, tiny_components(correction_stages=1))  # as shipped: head and tail both real graphs
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridflow.export.cli import export_bundle

    out = tmp_path_factory.mktemp("model") / "tiny"
    export_bundle(tiny_bundle, out, simplify=True, parity=False)
    return out


@pytest.fixture(scope="session")
def codec(tiny_model: Path):  # noqa: ANN201
    from hybridflow.runtime import Codec

    return Codec.load(tiny_model, provider="cpu")


@pytest.fixture
def photo() -> np.ndarray:
    """A real photo crop when the data folder is there, else a synthetic textured image."""
    path = data_root() / "kodak" / "kodim23.png"
    if path.exists():
        from hybridflow.runtime.imageio import read_image

        return read_image(path)[0][100:400, 200:620]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:300, :420]
    base = np.stack([np.sin(x / 17.0), np.cos(y / 11.0), np.sin((x + y) / 23.0)], -1) * 80 + 128
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _write_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size[0], : size[1]]
    for k in range(n):
        f = rng.uniform(5, 40, 3)
        img = np.stack([np.sin(x / f[0] + k), np.cos(y / f[1]), np.sin((x + y) / f[2])], -1) * 90 + 128
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{k:03d}.png"), img)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic data root: train/ (bigger than the pack's crops) and val/."""
    root = tmp_path_factory.mktemp("data")
    _write_images(root / "train", 12, (400, 520), seed=0)
    _write_images(root / "val", 3, (256, 256), seed=1)
    return root
