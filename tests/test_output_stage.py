"""The VQ decoder's light output stage (``VQConfig.output = "subpixel"``): distilled from the full one by
``hf-train output`` with every other weight left alone, exported with less work in the pixel tail, and
decoded seamlessly by the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _save_parts(c, folder: Path) -> None:  # noqa: ANN001
    from hybridflow.models import checkpoint

    for name, model, kind in (("vq", c.vq, "vq"), ("cont", c.cont, "cont"), ("predictor", c.predictor, "predictor")):
        checkpoint.save(folder / f"{name}.pt", model=model.state_dict(), config=model.cfg, kind=kind)
    checkpoint.save(folder / "correction.pt", model=c.correction.state_dict(), kind="correction")


def test_distillation_learns_the_old_stage_and_touches_nothing_else(synthetic_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hybridflow.models import checkpoint, lpips
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.train import output
    from hybridflow.models.train.loop import read_log
    from hybridflow.models.vq import VQAutoencoder, VQConfig

    if not lpips.available("alex"):
        pytest.skip("no LPIPS weights in ../shared/weights/lpips (validation measures LPIPS-Alex)")
    monkeypatch.setenv(lpips.ENV, str(lpips.weights_dir()))
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    c = tiny_components(correction_stages=1)
    _save_parts(c, tmp_path)
    cfg = output.OutputTrainConfig(steps=40, batch=4, crop_tokens=4, tiles=4, lr=3e-3, val_every=0, val_tiles=2)
    output.train(tmp_path / "run", cfg, tmp_path / "vq.pt", tmp_path / "cont.pt", tmp_path / "predictor.pt",
                 tmp_path / "correction.pt", tmp_path / "cache")

    saved = checkpoint.load(tmp_path / "run" / "vq.pt")
    assert saved["kind"] == "vq" and saved["step"] == 40
    student = checkpoint.load_model(tmp_path / "run" / "vq.pt", VQAutoencoder, VQConfig)
    assert student.cfg.output == "subpixel"
    old = c.vq.state_dict()
    for k, v in student.state_dict().items():  # every weight but the new stage's is the input's, bit for bit
        if not k.startswith("decoder.out."):
            assert torch.equal(v, old[k]), k
    # the new stage draws the old stage's pictures better than where it started
    start = output.with_subpixel_output(c.vq)
    torch.manual_seed(0)
    with torch.no_grad():  # features entering the last stage, from full token maps (the VQ-only stream's)
        h = c.vq.decoder.head(c.vq.quantizer.lookup(torch.randint(0, c.vq.cfg.n_codes, (2, 6, 6))))
        for up in c.vq.decoder.ups[:-1]:
            h = up(h)
        target = c.vq.decoder.output(c.vq.decoder.ups[-1](h))
        err = [(m.decoder.out(h) - target).abs().mean().item() for m in (start, student)]
    assert err[1] < 0.8 * err[0]
    records = read_log(tmp_path / "run")
    assert "old_val_psnr" in records[0] and "val_psnr" in records[-1]

    # the second phase: from the distilled stage, against the originals (L1 + LPIPS-VGG)
    if lpips.available("vgg"):
        fine = output.OutputTrainConfig(steps=3, batch=2, crop_tokens=4, tiles=4, val_every=0, val_tiles=2,
                                        l1_weight=1.0, lpips_weight=1.0, teacher_weight=0.5,
                                        init=str(tmp_path / "run" / "vq.pt"))
        output.train(tmp_path / "fine", fine, tmp_path / "vq.pt", tmp_path / "cont.pt", tmp_path / "predictor.pt",
                     tmp_path / "correction.pt", tmp_path / "cache")
        tuned = checkpoint.load_model(tmp_path / "fine" / "vq.pt", VQAutoencoder, VQConfig)
        moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, student.state_dict()[k])]
        assert moved and all(k.startswith("decoder.out.") for k in moved)

    with pytest.raises(ValueError, match="not a subpixel output stage"):  # an init that is not this stage
        output.train(tmp_path / "bad", output.OutputTrainConfig(init=str(tmp_path / "vq.pt")), tmp_path / "vq.pt",
                     tmp_path / "cont.pt", tmp_path / "predictor.pt", tmp_path / "correction.pt", tmp_path / "cache")
    with pytest.raises(ValueError, match="already has"):
        output.train(tmp_path / "again", cfg, tmp_path / "run" / "vq.pt", tmp_path / "cont.pt",
                     tmp_path / "predictor.pt", tmp_path / "correction.pt", tmp_path / "cache")


def test_a_subpixel_model_exports_with_less_work_and_decodes_seamlessly(tiny_model: Path, tmp_path: Path,
                                                                       photo: np.ndarray,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from benchmarks.quantize import run_macs
    from hybridflow.export.cli import export_bundle
    from hybridflow.models.bundle import save_bundle, tiny_components
    from hybridflow.runtime import Codec
    from hybridflow.runtime import codec as codec_module

    save_bundle(tmp_path / "sub.pt", tiny_components(correction_stages=1, output="subpixel"))
    man = export_bundle(tmp_path / "sub.pt", tmp_path / "model", timing=False)  # parity: ONNX vs PyTorch
    assert man["parity"]["graphs"]["pixel_tail"]["random"]["image"]["max_abs"] < 1e-3
    ops = [n.op_type for n in onnx.load(tmp_path / "model" / "pixel_tail.onnx").graph.node]
    assert "DepthToSpace" in ops
    work = {name: run_macs(folder / "pixel_tail.onnx", {"features": (1, 16, 8, 8)})[0]
            for name, folder in (("full", tiny_model), ("subpixel", tmp_path / "model"))}
    assert work["subpixel"] < work["full"]  # (tiny: 8 channels at the end; the shipped model: 67 k → 22 k per pixel)

    codec = Codec.load(tmp_path / "model", provider="cpu")
    img = np.ascontiguousarray(np.tile(photo, (2, 2, 1))[:530, :700])
    data = codec.compress(img, mask="1_4")
    for name in ("DECODE_WINDOW", "TAIL_WINDOW"):
        monkeypatch.setattr(codec_module, name, 1000)
    whole = codec.decompress(data).astype(int)
    monkeypatch.setattr(codec_module, "TAIL_WINDOW", 5)
    assert np.abs(whole - codec.decompress(data).astype(int)).max() <= 1


def test_the_speed_benchmarks_cost_table_leaves_out_a_graph_whose_shapes_depend_on_the_stream(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The predictor encodes only the sent tokens (how many: read from `visible`), so ONNX shape inference
    cannot size its layers; the cost table must say so and still count the other graphs (it used to raise)."""
    from benchmarks import speed
    from benchmarks.speed import GraphCalls, StageClock, cost_section, instrumented, kodak_run

    monkeypatch.setattr(speed, "MASK", "1_4")  # literally: auto's size cap would give this tiny image no indices
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    clock, calls = StageClock(), GraphCalls()
    with instrumented(clock, calls):
        run = kodak_run(str(tiny_model), 1, [("noise", rgb)], clock, calls)
    text = cost_section(tiny_model, [run])
    assert "Not counted" in text and "predictor" in text.split("Not counted")[1]
    assert "| pixel_tail |" in text and "| predictor |" not in text
