"""The GPU-window trainer at toy size on the CPU: the time-boxed shared loop, and ``burst`` end to end
(its checkpoints must bundle and export)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from .test_pack import make_pack

pytest.importorskip("torch")


def test_deadline_starts_no_step_that_would_overrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridflow.models.train import loop

    now = [1000.0]
    monkeypatch.setattr(loop.time, "time", lambda: now[0])
    d = loop.Deadline(minutes=1 / 60, reserve_s=0.2)  # 1 s budget, 0.2 s kept back: steps must end by 0.8 s
    assert not d.passed()
    d.step_done(0.3)
    now[0] += 0.4
    assert not d.passed()  # 0.4 + 0.3 ≤ 0.8
    now[0] += 0.2
    assert d.passed()  # 0.6 + 0.3 > 0.8
    assert d.share_left() == pytest.approx(0.2 / 0.8)
    assert not loop.Deadline(minutes=0).passed() and loop.Deadline(minutes=0).share_left() == 1.0  # no budget


def test_a_stage_stops_on_its_wall_clock_budget(synthetic_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hybridflow.models import checkpoint
    from hybridflow.models.data import ImageCache
    from hybridflow.models.hyperprior import ContConfig
    from hybridflow.models.train import stage1_cont
    from hybridflow.models.train.loop import read_log

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    # set-up counts against the budget: build the image cache and pay torch.optim's first-use import
    # (seconds on a loaded machine) before the clock starts
    ImageCache(synthetic_data / "train", tmp_path / "cache", downscale_by=4)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    cfg = stage1_cont.ContTrainConfig(steps=10**6, batch=2, minutes=0.1, val_every=10**6)
    stage1_cont.train(tmp_path / "run", cfg, ContConfig(channels=16, latent=16, hyper=8), tmp_path / "cache")
    ck = checkpoint.load(tmp_path / "run" / "last.pt")
    assert 0 < ck["step"] < 10**6  # stopped by the clock, with a checkpoint
    records = read_log(tmp_path / "run")
    assert records[-1]["step"] == ck["step"] and "val_bpp" in records[-1]  # validated where it stopped


def test_toy_burst_on_cpu_bundles_and_exports(synthetic_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hybridflow.export.cli import export_bundle
    from hybridflow.models import checkpoint, lpips
    from hybridflow.models.train.burst import OUT_FILES, BurstConfig, run
    from hybridflow.models.train.release import make_bundle

    if not (lpips.available("vgg") and lpips.available("alex")):
        pytest.skip("no LPIPS weights in ../shared/weights/lpips (the pack carries them)")
    monkeypatch.setenv(lpips.ENV, str(lpips.weights_dir()))  # run() points both at the pack; restored after
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    # every stage's networks through torch.compile (--compile), traced forward and backward but run without
    # code generation (backend aot_eager: seconds, not minutes); test_training.py compiles for real
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    pack = tmp_path / "pack"
    make_pack(pack, synthetic_data, tmp_path / "cache", mib=6.0, vgg_blocks=1, alex=True)  # LPIPS from the pack
    out = tmp_path / "out"
    cfg = BurstConfig(out=str(out), data=str(pack), minutes=10.0, device="cpu", work=str(tmp_path / "work"), toy=True,
                      steps=2, tiles=8, vq_batch=2, cont_batch=2, stage2_batch=4, stage3_batch=2, val_every=10**6,
                      bf16=False, stage3_predictor=True, compile=True)
    # (bf16 on a CPU pays oneDNN set-up per shape: slow for toy networks; stage 3 also fine-tunes the
    # predictor, whose stage-3 weights must be the ones that come out)
    log = run(cfg)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    assert all(p.stat().st_size <= 16 << 20 for p in out.iterdir())
    assert set(log["stages"]) == {"stage1_vq", "stage1_cont", "stage2", "stage3"}
    for name, stage in log["stages"].items():
        assert stage["steps"] == 2 and stage["images_per_s"] > 0, name
        assert stage["validation"], name  # every stage validates when it stops
    assert json.loads((out / "burst_log.json").read_text())["stages"] == log["stages"]
    shipped, stage2_end, stage3_end = (checkpoint.load(p)["model"] for p in (
        out / "predictor.pt", tmp_path / "work" / "stage2" / "last.pt", tmp_path / "work" / "stage3" / "predictor.pt"))
    assert all(torch.equal(v, stage3_end[k].half() if v.is_floating_point() else stage3_end[k])
               for k, v in shipped.items())
    assert not torch.equal(stage2_end["head.weight"], stage3_end["head.weight"])  # stage 3 moved it
    c = make_bundle(tmp_path / "b.pt", out / "vq.pt", out / "cont.pt", out / "predictor.pt", out / "correction.pt",
                    "toy-burst", tmp_path / "cache", n_tiles=8)
    assert c.predictor is not None and c.correction is not None
    man = export_bundle(tmp_path / "b.pt", tmp_path / "model", parity=False)
    assert set(man["graphs"]) >= {"predictor", "pixel_head", "pixel_tail"}


def test_stage3_trains_through_the_fusion(synthetic_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf-train stage3 --fusion``: the loss is taken on the fused picture, so the fusion learns too and
    comes out as a fusion checkpoint that ``hf-train bundle --fusion`` takes; validation scores the fused
    picture (a different number from the pixel decoder's alone)."""
    import torch

    from hybridflow.models import checkpoint, lpips
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.correction import CorrectionNet, PixelDecoder
    from hybridflow.models.data import val_crops
    from hybridflow.models.train import stage3, tile_cache
    from hybridflow.models.train.loop import read_log

    if not (lpips.available("vgg") and lpips.available("alex")):
        pytest.skip("no LPIPS weights in ../shared/weights/lpips")
    monkeypatch.setenv(lpips.ENV, str(lpips.weights_dir()))  # (found beside the data otherwise)
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    c = tiny_components(with_fusion=True)
    files = {"vq": (c.vq, "vq"), "cont": (c.cont, "cont"), "predictor": (c.predictor, "predictor"),
             "fusion": (c.fusion, "fusion")}
    for name, (model, kind) in files.items():
        checkpoint.save(tmp_path / f"{name}.pt", model=model.state_dict(), config=model.cfg, kind=kind)
    cfg = stage3.Stage3TrainConfig(steps=3, batch=2, tiles=4, lr=1e-3, fusion=str(tmp_path / "fusion.pt"),
                                   fusion_lr=1e-2, lpips_weight=1.0, lpips_layers=1, perceptual_weight=0,
                                   schedules=("1_4",), val_every=3, val_tiles=2)
    stage3.train(tmp_path / "run", cfg, tmp_path / "vq.pt", tmp_path / "cont.pt", tmp_path / "predictor.pt",
                 tmp_path / "cache")

    fused = checkpoint.load(tmp_path / "run" / "fusion.pt")
    assert fused["kind"] == "fusion" and fused["step"] == 3
    moved = [k for k, v in c.fusion.state_dict().items() if not torch.equal(v, fused["model"][k])]
    assert "out.2.weight" in moved
    records = read_log(tmp_path / "run")
    val = [r for r in records if "val_psnr" in r]
    assert [r["step"] for r in val] == [0, 3]

    # step 0's score is the fused picture's, not the pixel decoder's alone
    vq, cont = tile_cache.load_frozen(tmp_path / "vq.pt", tmp_path / "cont.pt")
    tiles = np.stack(val_crops(2))
    correction = CorrectionNet(vq.cfg, cont.cfg.channels)
    correction.init_from(vq.decoder)  # where a run without --init starts
    decoder = PixelDecoder(vq, correction).eval()
    alone = stage3.validate(decoder, c.predictor, True, tiles, *tile_cache.tokens_and_guidance(vq, cont, tiles),
                            lpips.LPIPS("alex"))
    assert abs(alone["val_psnr"] - val[0]["val_psnr"]) > 1e-3
