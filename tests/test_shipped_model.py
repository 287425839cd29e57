"""The model embedded in the runtime package: what hf-export makes of the committed bundle, and it
really compresses a photo it never saw in training into the advertised range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridflow.runtime import Codec, metrics
from hybridflow.runtime.imageio import read_image
from hybridflow.runtime.model import DEFAULT_MODEL_DIR

from .conftest import REPO, data_root

BUNDLE = REPO / "models" / "release" / "hybridflow.pt"
pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").exists(), reason="no shipped model yet")


def test_default_model_is_the_export_of_the_committed_bundle(tmp_path: Path) -> None:
    from hybridflow.export.cli import export_bundle

    shipped = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    assert shipped["random_init"] is False
    man = export_bundle(BUNDLE, tmp_path / "m", parity=False)
    assert man["model_id"] == shipped["model_id"]


def test_end_to_end_on_a_kodak_image() -> None:
    path = data_root() / "kodak" / "kodim23.png"
    if not path.exists():
        pytest.skip(f"{path} missing (set HF_DATA)")
    rgb, _ = read_image(path)
    codec = Codec.load()
    results = {}
    for mask, stream in (("auto", "hybrid"), ("none", "vq"), ("none", "continuous")):
        data = codec.compress(rgb, mask=mask, stream=stream)
        rec = codec.decompress(data)
        results[stream] = (8 * len(data) / (rgb.shape[0] * rgb.shape[1]), metrics.psnr(rgb, rec))
    bpp, psnr = results["continuous"]
    assert bpp < 0.03 and psnr > 22.0, results
    bpp, psnr = results["vq"]
    assert bpp < 0.045 and psnr > 18.0, results
    # Stage-3 model (measured: kodim23 at auto 0.0337 bpp / 21.37 dB; VQ-only 18.43 dB; continuous 22.98 dB):
    # the correction network must lift the hybrid stream well above the plain VQ decoder's ≈ 14 dB.
    bpp, psnr = results["hybrid"]
    assert bpp < 0.05 and psnr > 20.0, results
