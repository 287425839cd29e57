"""The continuous stream's learned ×4 up-sampling (models/upsampler.py) through export and runtime.

An untrained upsampler is exactly the bicubic reconstruction (its last layer starts at zero); the
manifest's ``reconstruct_margin`` covers its receptive field; and the runtime decodes a continuous
stream in windows to the same pixels as one whole-image call."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hybridflow.models.bundle import save_bundle, tiny_components  # noqa: E402
from hybridflow.models.hyperprior import ContConfig, ContinuousCodec  # noqa: E402
from hybridflow.runtime import Codec  # noqa: E402
from hybridflow.runtime import codec as codec_module  # noqa: E402


def _randomise_last_layer(cont: ContinuousCodec, seed: int = 1) -> None:
    """Training moves the zero-initialised last layer; tests need it non-zero to see the learned path."""
    gen = torch.Generator().manual_seed(seed)
    last = cont.upsampler.up[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.3)


def test_untrained_upsampler_is_bicubic() -> None:
    cont = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8)).eval()
    g = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        bicubic = cont.full_resolution(g)
        cont.add_upsampler(8)
        learned = cont.full_resolution(g)
    assert learned.shape == bicubic.shape == (2, 3, 96, 80)
    assert torch.equal(learned, bicubic)


def test_margin_covers_the_receptive_field() -> None:
    """Changing one guidance cell changes output pixels no farther than ``receptive_radius`` cells
    from that cell's footprint, and beyond the cell itself."""
    cont = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8)).eval()
    cont.add_upsampler(8)
    _randomise_last_layer(cont)
    g = torch.randn(1, 16, 15, 15)
    other = g.clone()
    other[0, :, 7, 7] += 1.0
    with torch.no_grad():
        diff = (cont.upsampler(g) - cont.upsampler(other)).abs().amax(dim=(0, 1)) > 0
    ys, xs = np.nonzero(diff.numpy())
    px = 16
    reach = max(7 * px - ys.min(), ys.max() - (8 * px - 1), 7 * px - xs.min(), xs.max() - (8 * px - 1))
    assert px < reach <= cont.upsampler.receptive_radius() * px


@pytest.fixture(scope="module")
def upsampling(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(codec, components): a tiny model with a (non-trivial) learned up-sampling, exported."""
    from hybridflow.export.cli import export_bundle
    from hybridflow.models.bundle import load_bundle

    c = tiny_components(seed=3)
    c.cont.add_upsampler(8)
    _randomise_last_layer(c.cont)
    folder = tmp_path_factory.mktemp("upsampler")
    save_bundle(folder / "tiny.pt", c)
    export_bundle(folder / "tiny.pt", folder / "model", simplify=True, parity=False)
    return Codec.load(folder / "model", provider="cpu"), load_bundle(folder / "tiny.pt")  # fp16-rounded weights


def test_manifest_describes_the_learned_upsampling(upsampling) -> None:  # noqa: ANN001
    m = upsampling[0].model.manifest
    assert m["reconstruct_pixels"] == 1
    assert m["reconstruct_margin"] >= 5


def test_continuous_stream_windowed_equals_whole(upsampling, photo: np.ndarray,  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    codec = upsampling[0]
    img = np.ascontiguousarray(np.tile(photo, (2, 2, 1))[:530, :700])
    data = codec.compress(img, stream="continuous")
    monkeypatch.setattr(codec_module, "RECON_WINDOW", 1000)  # the whole guidance map in one call
    whole = codec.decompress(data).astype(int)
    monkeypatch.setattr(codec_module, "RECON_WINDOW", 8)  # 4×4-cell windows
    windows = codec.decompress(data).astype(int)
    assert whole.shape == img.shape
    assert np.abs(whole - windows).max() <= 1


def test_runtime_runs_the_learned_upsampling(upsampling, photo: np.ndarray) -> None:  # noqa: ANN001
    """The runtime's continuous-only picture is the torch upsampler's output on the same guidance,
    and visibly not the bicubic one."""
    from hybridflow.runtime.codec import Decoded
    from hybridflow.runtime.entropy import Decoder
    from hybridflow.runtime.streams import stream_kind
    from hybridflow.runtime.tiling import TileGrid

    codec, c = upsampling
    img = np.ascontiguousarray(photo[:256, :256])
    data = codec.compress(img, stream="continuous")
    out = codec.decompress(data).astype(int)
    header, words, _ = codec.read_header(data)
    got = Decoded()
    part = codec.parts(stream_kind("continuous"))[0]
    part.pop(Decoder(codec.model.tables, words), header, TileGrid(256, 256), got)
    part.synthesise(got)
    g = torch.from_numpy(got.guidance)
    with torch.no_grad():
        learned = (c.cont.upsampler(g).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
        bicubic = (torch.nn.functional.interpolate(c.cont.reconstruct(g), scale_factor=4.0, mode="bicubic")
                   .clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(out - learned).max() <= 2
    assert np.abs(out - bicubic).mean() > 1


def test_encoder_only_training_leaves_the_decoder_side_alone(synthetic_data, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``stage1-cont --encoder-only``: the analysis, hyper networks and prior learn for the full-resolution
    picture, while the synthesis and the learned up-sampling (what the guidance and every later stage
    depend on) stay bit-identical; validation reports the full-resolution PSNR; a codec without a learned
    up-sampling is refused."""

    from hybridflow.models import checkpoint
    from hybridflow.models.train import stage1_cont
    from hybridflow.models.train.loop import read_log

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    torch.manual_seed(0)
    cfg = ContConfig(channels=16, latent=16, hyper=8)
    plain = ContinuousCodec(cfg)
    checkpoint.save(tmp_path / "plain.pt", model=plain.state_dict(), config=cfg, kind="cont")
    train_cfg = stage1_cont.ContTrainConfig(steps=4, batch=2, crop=64, val_every=2, lr=1e-3,
                                            init=str(tmp_path / "plain.pt"), encoder_only=True)
    with pytest.raises(ValueError, match="learned up-sampling"):
        stage1_cont.train(tmp_path / "refused", train_cfg, ContConfig(), tmp_path / "cache")

    plain.add_upsampler(8)
    _randomise_last_layer(plain)
    checkpoint.save(tmp_path / "cont.pt", model=plain.state_dict(), config=plain.cfg, kind="cont")
    train_cfg.init = str(tmp_path / "cont.pt")
    stage1_cont.train(tmp_path / "run", train_cfg, ContConfig(), tmp_path / "cache")

    before = plain.state_dict()
    after = checkpoint.load(tmp_path / "run" / "last.pt")["model"]
    decoder_side = ("g_s_head.", "g_s_tail.", "upsampler.")
    for name, value in before.items():
        if name.startswith(decoder_side):
            assert torch.equal(value, after[name]), name
    moved = [n for n, v in before.items() if not n.startswith(decoder_side) and not torch.equal(v, after[n])]
    assert any(n.startswith("g_a.") for n in moved) and any(n.startswith("h_s.") for n in moved)
    records = read_log(tmp_path / "run")
    val = [r for r in records if "val_psnr_full" in r]
    assert val[0]["step"] == 0 and len(val) >= 2  # the starting point of the curve, then the run's


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_as_a_convolution_equals_interpolate(scale: int) -> None:
    """The exported bicubic (edge pad, fixed depthwise convolution, pixel shuffle) is PyTorch's bicubic,
    edges included, on odd and tiny sizes."""
    import torch
    import torch.nn.functional as F

    from hybridflow.models.upsampler import BicubicUp

    for shape in [(1, 3, 7, 5), (2, 3, 12, 17), (1, 3, 1, 1), (1, 3, 2, 9)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        ref = F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)
        got = BicubicUp(3, scale)(x)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-6)
    assert not BicubicUp(3, scale).state_dict()  # a fixed kernel: checkpoints do not change


def test_exported_continuous_picture_has_no_transposed_convolution(upsampling) -> None:  # noqa: ANN001
    """The learned up-sampling is exported without ``ConvTranspose`` (slow on CPU, no int8 kernel)."""
    import onnx

    ops = {n.op_type for n in onnx.load(upsampling[0].model.directory / "cont_reconstruct.onnx").graph.node}
    assert "Conv" in ops and "ConvTranspose" not in ops


def test_training_guidance_at_a_rate_point_is_what_the_codec_decodes_there() -> None:
    """`hf-train upsampler --rate-share` learns from the guidance of other rate points: it must be the
    codec's own decode at that point (gains before rounding, inverse gains after), and the base point's
    the plain one."""
    import torch

    from hybridflow.models.train.tile_cache import guidance

    torch.manual_seed(0)
    cont = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=1)).eval()
    with torch.no_grad():
        cont.g_a[-1].weight.mul_(50)  # latents of a few units, as in a trained codec: rounding matters
    gain = torch.tensor([0.5, 1.0, 2.5])[:, None].expand(3, 16)
    cont.set_rate_gains(gain, 1 / gain)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    assert torch.equal(guidance(cont, x, 1), guidance(cont, x))
    with torch.no_grad():
        for k in (0, 2):
            decoded = cont(cont.lowres(x), gains=cont.rate_gains(k))["g"]
            assert torch.allclose(guidance(cont, x, k), decoded, atol=1e-5)
            assert not torch.allclose(guidance(cont, x, k), guidance(cont, x), atol=1e-3)


def test_start_from_takes_the_upsampling_layers_not_the_codec_tail(tmp_path) -> None:  # noqa: ANN001
    """``hf-train upsampler --init``: a retrained codec gets another checkpoint's up-sampling layers,
    but keeps its own synthesis tail (shared with the up-sampling), and a mismatch is refused."""
    from hybridflow.models import checkpoint
    from hybridflow.models.train.upsampler import start_from

    cfg = ContConfig(channels=16, latent=16, hyper=8, upsampler=8)
    torch.manual_seed(0)
    old, new = ContinuousCodec(cfg), ContinuousCodec(cfg)
    _randomise_last_layer(old)
    checkpoint.save(tmp_path / "old.pt", model=old.state_dict(), config=cfg)
    tail = {k: v.clone() for k, v in new.g_s_tail.state_dict().items()}
    start_from(new, tmp_path / "old.pt")
    assert torch.equal(new.upsampler.up[-1].weight, old.upsampler.up[-1].weight)
    assert all(torch.equal(v, new.g_s_tail.state_dict()[k]) for k, v in tail.items())
    assert not torch.equal(new.g_s_tail[0].weight, old.g_s_tail[0].weight)

    wide = ContConfig(channels=16, latent=16, hyper=8, upsampler=12)
    checkpoint.save(tmp_path / "wide.pt", model=ContinuousCodec(wide).state_dict(), config=wide)
    with pytest.raises(SystemExit, match="does not match"):
        start_from(new, tmp_path / "wide.pt")
