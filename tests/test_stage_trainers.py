"""The two small trainers that no other test runs: ``hf-train upsampler`` (the continuous stream's ×4
up-sampling, the codec's symbols frozen) and ``hf-train fusion`` (trained on an exported model's own decodes). Toy
size, a few steps each: what must hold is what a release relies on — only the intended weights move,
the checkpoint is the kind ``hf-train bundle`` takes, and validation logs the numbers to beat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


def test_upsampler_run_moves_only_the_upsampling(synthetic_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hybridflow.models import checkpoint
    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec
    from hybridflow.models.train import upsampler
    from hybridflow.models.train.loop import read_log

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    torch.manual_seed(0)
    codec = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=1))
    checkpoint.save(tmp_path / "cont.pt", model=codec.state_dict(), config=codec.cfg, kind="cont")
    cfg = upsampler.UpsamplerTrainConfig(steps=3, batch=2, crop=256, channels=8, lr=1e-2, rate_share=0.5,
                                         val_every=3, val_tiles=2)
    upsampler.train(tmp_path / "run", cfg, tmp_path / "cont.pt", tmp_path / "cache")

    out = checkpoint.load_model(tmp_path / "run" / "last.pt", ContinuousCodec, ContConfig)  # what bundle --cont reads
    assert out.upsampler is not None and out.cfg.upsampler == 8
    before, after = codec.state_dict(), out.state_dict()
    # what makes the streams and the guidance (analysis, entropy model, synthesis head) is untouched; the
    # synthesis tail is shared with the up-sampling (models/upsampler.py) and learns with it
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert moved and all(k.startswith("g_s_tail.") for k in moved)
    last = out.upsampler.up[-1]  # starts at zero (a new up-sampling is bicubic): it must have learned
    assert last.weight.abs().sum() > 0 and last.bias.abs().sum() > 0
    val = [r for r in read_log(tmp_path / "run") if "val_psnr" in r]
    assert [r["step"] for r in val] == [0, 3]
    # the new up-sampling's last layer starts at zero: at step 0 it *is* the bicubic number it must beat
    assert val[0]["val_psnr"] == pytest.approx(val[0]["val_psnr_bicubic"], abs=1e-6)


def test_fusion_run_trains_on_the_exported_models_decodes(synthetic_data: Path, tiny_model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridflow.models import checkpoint, lpips
    from hybridflow.models.fusion import Fusion, FusionConfig
    from hybridflow.models.train import fusion as fusion_stage
    from hybridflow.models.train.loop import read_log

    if not (lpips.available("vgg") and lpips.available("alex")):
        pytest.skip("no LPIPS weights in ../shared/weights/lpips")
    monkeypatch.setenv(lpips.ENV, str(lpips.weights_dir()))
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    cfg = fusion_stage.FusionTrainConfig(model=str(tiny_model), steps=2, batch=2, crop=64, crops=3, crop_side=128,
                                         channels=8, blocks=1, lr=1e-2, val_every=2, val_images=2)
    fusion_stage.train(tmp_path / "run", cfg, tmp_path / "cache")

    ck = checkpoint.load(tmp_path / "run" / "last.pt")
    assert ck["kind"] == "fusion" and ck["step"] == 2
    trained = checkpoint.load_model(tmp_path / "run" / "last.pt", Fusion, FusionConfig)  # what bundle --fusion reads
    assert trained.cfg == FusionConfig(8, 1, 0.0)
    assert trained.state_dict()["out.2.weight"].abs().sum() > 0  # its zero-started last layer learned
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(caches) == 2 and all(name.startswith("fusion_") for name in caches)

    val = [r for r in read_log(tmp_path / "run") if "val_psnr" in r]
    assert [r["step"] for r in val] == [0, 2]
    # step 0: an untrained fusion is the pixel decoder's picture, the number it has to beat
    assert val[0]["val_psnr"] == pytest.approx(val[0]["val_psnr_tokens"], abs=1e-9)
    assert "val_lpips_alex_continuous" in val[0]

    # the cached training triples are the model's real decodes: the same crop, coded again, decodes the same
    from hybridflow.runtime.codec import Codec
    from hybridflow.runtime.model import Model

    codec = Codec(Model.load(tiny_model, threads=1), fusion=False)
    first = fusion_stage.train_triples(codec, 2, cfg.crop_side, cfg.seed, cfg.rate_share)
    again = fusion_stage.train_triples(codec, 2, cfg.crop_side, cfg.seed, cfg.rate_share)
    for a, b in zip(first, again):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert a[0].shape == a[1].shape == a[2].shape and max(a[0].shape[:2]) <= cfg.crop_side
    assert not np.array_equal(first[0][1], first[0][2])  # two different pictures
