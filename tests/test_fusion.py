"""The fusion of a hybrid decode's two pictures (models/fusion.py): exported, run by the runtime in
windows, equal to one whole-picture call, and carried through bundle → model directory → bundle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime import Codec
from hybridflow.runtime import codec as codec_module

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fusion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridflow.export.cli import export_bundle
    from hybridflow.models.bundle import save_bundle, tiny_components

    folder = tmp_path_factory.mktemp("fusion")
    save_bundle(folder / "tiny.pt", tiny_components(with_fusion=True))
    export_bundle(folder / "tiny.pt", folder / "model", simplify=True, parity=False)
    return folder / "model"


def odd_photo(photo: np.ndarray, h: int = 531, w: int = 701) -> np.ndarray:
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
    return np.ascontiguousarray(np.tile(photo, reps)[:h, :w])


@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_receptive_radius_bounds_the_reach(sigma: float) -> None:
    """Changing one input pixel changes output pixels no farther than ``receptive_radius``, and
    farther than a few pixels (so the bound is not vacuous); the low-frequency anchor widens it."""
    from hybridflow.models.fusion import Fusion, FusionConfig

    torch.manual_seed(0)
    f = Fusion(FusionConfig(channels=8, blocks=2, lowpass_sigma=sigma))
    torch.nn.init.normal_(f.out[-1].weight, std=0.1)
    a, b = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96)
    b2 = b.clone()
    b2[0, :, 48, 48] += 0.5
    with torch.no_grad():
        diff = (f(a, b) - f(a, b2)).abs().amax(dim=(0, 1)) > 1e-7
    ys, xs = np.nonzero(diff.numpy())
    reach = max(48 - ys.min(), ys.max() - 48, 48 - xs.min(), xs.max() - 48)
    assert 4 < reach <= f.receptive_radius()
    if sigma:
        assert reach > Fusion(FusionConfig(channels=8, blocks=2)).receptive_radius()


def test_low_frequency_anchor_takes_the_continuous_pictures_low_frequencies() -> None:
    """With the anchor, a smooth difference between the two pictures (here a constant colour offset,
    up to the picture's edges) is taken over entirely from the continuous picture, while a
    pixel-scale pattern of the pixel decoder's (texture) stays; σ is weightless: ``from_state`` sets
    it on a trained fusion without touching its weights, and a negative σ is refused."""
    from hybridflow.models.fusion import Fusion, FusionConfig

    torch.manual_seed(0)
    plain = Fusion(FusionConfig(channels=8, blocks=1))  # untrained: its output is the pixel decoder's picture
    anchored = Fusion.from_state(plain.cfg, plain.state_dict(), lowpass_sigma=4.0)
    assert anchored.cfg.lowpass_sigma == 4.0 and plain.cfg.lowpass_sigma == 0.0
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(52), indexing="ij")
    texture = (((yy + xx) % 2) * 0.2 - 0.1).expand(1, 3, 40, 52)
    pixels = 0.1 + texture
    cont = torch.full((1, 3, 40, 52), 0.3)
    with torch.no_grad():
        assert torch.equal(plain(pixels, cont), pixels)
        out = anchored(pixels, cont)
    torch.testing.assert_close(out.mean(dim=(2, 3)), cont.mean(dim=(2, 3)), atol=1e-3, rtol=0)
    torch.testing.assert_close(out - out.mean(dim=(2, 3), keepdim=True), texture, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="σ"):
        Fusion.from_state(plain.cfg, plain.state_dict(), lowpass_sigma=-1.0)


def test_shallower_fusion_keeps_the_first_blocks() -> None:
    """``Fusion.from_state(..., blocks=n)`` is the deeper fusion without its last blocks: equal to it
    once those blocks' residual branches are zeroed, different before; more blocks than saved is refused."""
    from hybridflow.models.fusion import Fusion, FusionConfig

    torch.manual_seed(0)
    deep = Fusion(FusionConfig(channels=8, blocks=3))
    for p in deep.parameters():
        torch.nn.init.normal_(p, std=0.2)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    short = Fusion.from_state(deep.cfg, deep.state_dict(), blocks=1)
    assert short.cfg.blocks == 1 and len(short.body) == 1
    with torch.no_grad():
        assert not torch.allclose(short(a, b), deep(a, b), atol=1e-4)
        for blk in deep.body[1:]:
            torch.nn.init.zeros_(blk.conv2.weight)
            torch.nn.init.zeros_(blk.conv2.bias)
        torch.testing.assert_close(short(a, b), deep(a, b))
    with pytest.raises(ValueError, match="blocks"):
        Fusion.from_state(deep.cfg, deep.state_dict(), blocks=4)


def test_low_frequency_anchor_runs_in_fp32_under_bf16_autocast() -> None:
    """Training runs the fusion under bf16 autocast on channels-last batches, where PyTorch's CPU depthwise
    convolution in bf16 is pathologically slow: the anchor computes in fp32 there, with the fp32 result."""
    from hybridflow.models.fusion import LowPass

    lowpass = LowPass(3.0)
    x = torch.rand(2, 3, 24, 30).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lowpass(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, lowpass(x.contiguous()))


def test_windowed_fusion_equals_whole_picture(fusion_model: Path, photo: np.ndarray,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec.load(fusion_model, provider="cpu")
    assert codec.model.manifest["fusion_margin"] == math.ceil(
        codec.model.manifest["fusion_margin"])  # an integer number of tokens
    img = odd_photo(photo)
    data = codec.compress(img, mask="1_4")
    for name in ("DECODE_WINDOW", "FUSION_WINDOW"):
        monkeypatch.setattr(codec_module, name, 1000)
    whole = codec.decompress(data).astype(int)
    for name in ("DECODE_WINDOW", "FUSION_WINDOW"):
        monkeypatch.setattr(codec_module, name, 5)
    windows = codec.decompress(data).astype(int)
    assert whole.shape == img.shape
    assert np.abs(whole - windows).max() <= 1


def test_fusion_changes_hybrid_pictures_only(fusion_model: Path, photo: np.ndarray) -> None:
    """The fused picture differs from the pixel decoder's (the tiny fusion is not zero); ``pictures``
    gives both unfused pictures; continuous-only and vq streams are not fused."""
    codec = Codec.load(fusion_model, provider="cpu")
    plain = Codec(codec.model, fusion=False)
    data = codec.compress(photo, mask="1_4")
    fused, pics = codec.decompress(data), codec.pictures(data)
    assert set(pics) == {"tokens", "continuous"}
    assert np.array_equal(pics["tokens"], plain.decompress(data))
    assert np.abs(fused.astype(int) - pics["tokens"]).max() > 0
    for stream in ("continuous", "vq"):
        other = codec.compress(photo, stream=stream)
        assert np.array_equal(codec.decompress(other), plain.decompress(other))


def test_progress_fills_once_over_the_passes(fusion_model: Path, photo: np.ndarray) -> None:
    codec = Codec.load(fusion_model, provider="cpu")
    data = codec.compress(photo, mask="1_4")
    seen: list[tuple[int, int]] = []
    codec.decompress(data, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1]
    assert all(a[0] / a[1] <= b[0] / b[1] for a, b in zip(seen, seen[1:]))


def test_fusion_survives_rebundle(fusion_model: Path, tmp_path: Path) -> None:
    """A model directory with a fusion rebuilds a bundle with the same fusion weights, and the
    stage checkpoints split from it include ``fusion.pt``."""
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.train.release import open_bundle, split_bundle

    c = open_bundle(fusion_model)
    ref = tiny_components(with_fusion=True).fusion
    assert c.fusion is not None
    for (k, v), w in zip(c.fusion.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, w.half().float()), k
    assert (tmp_path / "fusion.pt") in split_bundle(fusion_model, tmp_path)


def test_soft_codes_survive_rebundle_and_split(fusion_model: Path, tmp_path: Path) -> None:
    """How the correction was trained (expected codes at masked positions) travels with the model:
    bundle → export → rebuilt bundle → stage checkpoints → ``make_bundle`` reads it back."""
    from hybridflow.models import checkpoint
    from hybridflow.models.train.release import open_bundle, split_bundle

    assert open_bundle(fusion_model).soft_codes
    split_bundle(fusion_model, tmp_path)
    assert checkpoint.load(tmp_path / "correction.pt")["train_config"]["soft_codes"] is True


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_fusion_training_crops_take_the_rate_points_asked_for(fusion_model: Path, synthetic_data: Path,
                                                             monkeypatch: pytest.MonkeyPatch, share: float) -> None:
    """``rate_share`` 0: every crop at the base point (rate None); 1: every crop at a drawn point."""
    from hybridflow.models.train import fusion as fusion_train
    from hybridflow.runtime.codec import Codec
    from hybridflow.runtime.model import Model

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    asked: list[int | None] = []

    def fake_pair(codec: Codec, rgb: np.ndarray, mask: str, rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        asked.append(rate)
        return rgb, rgb

    monkeypatch.setattr(fusion_train, "decode_pair", fake_pair)
    codec = Codec(Model.load(fusion_model), fusion=False)
    fusion_train.train_triples(codec, 12, 64, seed=0, rate_share=share)
    if share == 0.0:
        assert asked == [None] * 12
    else:
        assert all(r is not None and 0 <= r < codec.model.rate_points for r in asked)
        assert len(set(asked)) > 1
