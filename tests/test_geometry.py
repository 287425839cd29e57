"""Sizes come from the model's manifest (issue 20.6): a model with other token and downscale sizes
codes and decodes, a manifest whose sizes do not fit together is refused on load, and the stream
format's tile is the one thing a header parse needs before the model is known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime.model import Model, ModelError
from hybridflow.runtime.tiling import TILE, Geometry

GOOD = {"tile": TILE, "token_pixels": 16, "downscale": 4, "latent_stride": 64, "hyper_stride": 256}


def test_geometry_from_manifest() -> None:
    g = Geometry.from_manifest(GOOD)
    assert (g.grid, g.tiles(700, 1000).count) == (16, 12)
    for bad, why in (({"tile": 2 * TILE}, "stream format"), ({"token_pixels": 24}, "token_pixels"),
                     ({"hyper_stride": 96}, "hyper_stride"), ({"latent_stride": 0}, "positive")):
        with pytest.raises(ValueError, match=why):
            Geometry.from_manifest({**GOOD, **bad})


def test_a_model_with_another_tile_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps({**manifest, "tile": 2 * TILE}))
    with pytest.raises(ModelError, match="manifest.json: invalid manifest .*stream format"):
        Model.load(model)


def test_a_pixel_head_without_its_margins_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """The head/tail margins come from the manifest: a missing or zero one fails at load, naming the file."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    assert "pixel_head" in manifest["graphs"] and manifest["head_cells"] == 2  # (the tiny model: one stage)
    for bad in ({**manifest, "tail_margin": 0}, {k: v for k, v in manifest.items() if k != "head_margin"}):
        (model / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ModelError, match="manifest.json: invalid manifest .*(tail_margin|head_margin)"):
            Model.load(model)


@pytest.fixture(scope="module")
def fine_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with 8-pixel tokens (32×32 per tile) and a ×2 continuous stream."""
    torch = pytest.importorskip("torch")
    from hybridflow.export.cli import export_bundle
    from hybridflow.models.bundle import Components, save_bundle
    from hybridflow.models.correction import CorrectionNet
    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec
    from hybridflow.models.transformer import MaskedTokenPredictor, TransformerConfig
    from hybridflow.models.vq import VQAutoencoder, VQConfig
    from hybridflow.runtime.complexity import ComplexityModel

    torch.manual_seed(0)
    vq_cfg = VQConfig(channels=(8, 8, 16), bottleneck=16, code_dim=8, n_codes=64, decoder_norm="channel")
    cont_cfg = ContConfig(channels=16, latent=16, hyper=8, downscale=2)
    vq, cont = VQAutoencoder(vq_cfg), ContinuousCodec(cont_cfg)
    predictor = MaskedTokenPredictor(TransformerConfig(n_codes=64, grid=TILE // vq_cfg.factor, guidance_channels=16,
                                                       dim=32, heads=2, enc_layers=1, dec_layers=1))
    correction = CorrectionNet(vq_cfg, cont_cfg.channels)
    correction.init_from(vq.decoder)
    counts = np.random.default_rng(0).integers(1, 50, vq_cfg.n_codes)
    c = Components(vq, cont, predictor, correction, ComplexityModel(), counts, "tiny-fine", True).eval()
    root = tmp_path_factory.mktemp("fine")
    save_bundle(root / "fine.pt", c)
    export_bundle(root / "fine.pt", root / "model", simplify=True, parity=False)
    return root / "model"


def test_a_model_with_other_sizes_codes_and_decodes(fine_model: Path) -> None:
    from hybridflow.runtime import Codec

    codec = Codec.load(fine_model, provider="cpu")
    assert (codec.geometry.token_pixels, codec.geometry.grid, codec.geometry.downscale) == (8, 32, 2)
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(128, 40, (300, 520, 3)), 0, 255).astype(np.uint8)  # 2×3 tiles, partial edges
    for stream, mask in (("hybrid", "1_4"), ("hybrid", "auto"), ("vq", "1_9"), ("continuous", "none")):
        data = codec.compress(img, mask=mask, stream=stream)
        assert codec.compress(img, mask=mask, stream=stream) == data
        out = codec.decompress(data)
        assert out.shape == img.shape, (stream, mask)
    info = codec.info(codec.compress(img, mask="1_4"))
    assert info.schedules == {"1_4": 6}
