"""Seamless by construction: a position-wise decoder decoded in windows equals one whole-image call.

The tiny random model uses ``decoder_norm="channel"`` (as shipped models do from s8 on). With GroupNorm
the same tokens give different colours per window — the seams and colour steps of models ≤ s7."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime import Codec
from hybridflow.runtime import codec as codec_module


def odd_photo(photo: np.ndarray, h: int = 530, w: int = 700) -> np.ndarray:
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
    return np.ascontiguousarray(np.tile(photo, reps)[:h, :w])


@pytest.mark.parametrize("stream", ["hybrid", "vq"])
def test_windowed_decode_equals_whole_image(codec: Codec, photo: np.ndarray, stream: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    img = odd_photo(photo)
    data = codec.compress(img, mask="1_4", stream=stream)
    for name in ("DECODE_WINDOW", "TAIL_WINDOW"):  # the whole token image in one call
        monkeypatch.setattr(codec_module, name, 1000)
    whole = codec.decompress(data).astype(int)
    monkeypatch.setattr(codec_module, "DECODE_WINDOW", 5)  # 5×5-token windows: 56 of them (VQ decoder;
    monkeypatch.setattr(codec_module, "TAIL_WINDOW", 5)  # the pixel decoder's tail, each with its head)
    windows = codec.decompress(data).astype(int)
    assert np.abs(whole - windows).max() <= 1


@pytest.mark.parametrize("output", ["full", "subpixel"])
def test_margin_is_the_receptive_field(output: str) -> None:
    """Changing one token changes output pixels no farther than the manifest's margin (in tokens)
    from that token's footprint, and does reach beyond the token itself."""
    torch = pytest.importorskip("torch")
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.vq import Decoder

    c = tiny_components(output=output)
    vq = c.vq
    margin = math.ceil(Decoder.receptive_radius(vq.cfg))
    idx = torch.randint(0, vq.cfg.n_codes, (1, 21, 21))
    other = idx.clone()
    other[0, 10, 10] = (idx[0, 10, 10] + 1) % vq.cfg.n_codes
    with torch.no_grad():
        diff = (vq.decode(idx) - vq.decode(other)).abs().amax(dim=(0, 1)) > 0
    ys, xs = np.nonzero(diff.numpy())
    px = vq.cfg.factor
    reach = max(10 * px - ys.min(), ys.max() - (11 * px - 1), 10 * px - xs.min(), xs.max() - (11 * px - 1))
    assert px < reach <= margin * px


@pytest.mark.parametrize(("stages", "output"), [(1, "full"), (2, "full"), (1, "subpixel"), (2, "subpixel")])
def test_head_and_tail_margins_are_their_receptive_fields(stages: int, output: str) -> None:
    """The pixel decoder's head and tail (its two graphs): changing one token's code changes the head's
    features no farther than ``head_margin`` tokens away, changing that token's features changes
    pixels no farther than ``tail_margin``; both reach beyond the token."""
    torch = pytest.importorskip("torch")
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.vq import Decoder

    c = tiny_components(correction_stages=stages, output=output)
    pd = c.pixel_decoder()
    head_margin, tail_margin = (math.ceil(r) for r in Decoder.radii(c.vq.cfg, stages))
    codes = c.codes(torch.randint(0, c.vq.cfg.n_codes, (1, 21, 21)))
    g = torch.randn(1, c.cont.cfg.channels, 21, 21)
    other = codes.clone()
    other[0, :, 10, 10] += 1
    with torch.no_grad():
        f, f2 = pd.head(codes, g), pd.head(other, g)
        f3 = f.clone()
        f3[..., 10 * 2**stages : 11 * 2**stages, 10 * 2**stages : 11 * 2**stages] += 1
        pixels = (pd.tail(f) - pd.tail(f3)).abs().amax(dim=(0, 1)) > 0
    for diff, per_token, margin in (((f - f2).abs().amax(dim=(0, 1)) > 0, 2**stages, head_margin),
                                    (pixels, c.vq.cfg.factor, tail_margin)):
        ys, xs = np.nonzero(diff.numpy())
        reach = max(10 * per_token - ys.min(), ys.max() - (11 * per_token - 1),
                    10 * per_token - xs.min(), xs.max() - (11 * per_token - 1))
        assert 0 < reach <= margin * per_token


def test_no_step_at_tile_borders(codec: Codec, photo: np.ndarray) -> None:
    """Error across a 256-px tile border is no larger than across neighbouring interior lines, and
    the partial edge tiles are no worse than the interior (random weights: a structural check)."""
    img = odd_photo(photo)
    out = codec.decompress(codec.compress(img, mask="1_4")).astype(float)
    err = out - img
    for axis in (0, 1):
        e = np.moveaxis(err, axis, 0)
        step = [np.abs(e[b] - e[b - 1]).mean() for b in range(256, e.shape[0], 256)]
        inner = [np.abs(e[b + d] - e[b + d - 1]).mean() for b in range(256, e.shape[0], 256) for d in (-8, -4, 4, 8)]
        assert np.mean(step) <= 1.1 * np.mean(inner), axis
    mse_edge = (err[512:] ** 2).mean()  # the partial bottom tile row (530 = 2·256 + 18)
    mse_inner = (err[:512, :512] ** 2).mean()
    assert mse_edge <= 2.0 * mse_inner


def test_a_format_3_model_with_one_pixel_decoder_graph_still_decodes(tiny_model: Path, tiny_bundle: Path,
                                                                     photo: np.ndarray, tmp_path: Path) -> None:
    """Models exported before session 17 have one ``pixel_decoder`` graph (codes, guidance → image) and
    the whole decoder's margin: the runtime still draws their hybrid streams with it, the same picture."""
    torch = pytest.importorskip("torch")
    import json
    import shutil

    from hybridflow.export.convert import to_onnx
    from hybridflow.export.graphs import GraphSpec, graph_specs
    from hybridflow.export.grids import components
    from hybridflow.models import checkpoint

    c = components(checkpoint.load(tiny_bundle), tiny_bundle)
    pd = c.pixel_decoder()

    class OneGraph(torch.nn.Module):  # what hf-export wrote as pixel_decoder up to session 16
        def __init__(self) -> None:
            super().__init__()
            self.decoder = pd

        def forward(self, codes: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
            return ((self.decoder(codes, guidance) + 1) / 2).clamp(0, 1)

    head = {s.name: s for s in graph_specs(c)}["pixel_head"]
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    spatial = {0: "batch", 2: "height", 3: "width"}
    entry = to_onnx(GraphSpec("pixel_decoder", OneGraph(), head.inputs, ["image"],
                              {"codes": spatial, "guidance": spatial, "image": spatial}), old / "pixel_decoder.onnx")
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("pixel_head", "pixel_tail", "head_margin", "tail_margin", "head_cells"):
        manifest.pop(name, None)
        manifest["graphs"].pop(name, None)
    manifest["graphs"]["pixel_decoder"] = entry
    manifest["format_version"] = 3
    (old / "manifest.json").write_text(json.dumps(manifest))
    new, before = Codec.load(tiny_model, provider="cpu"), Codec.load(old, provider="cpu")
    img = odd_photo(photo, 300, 420)
    data = new.compress(img, mask="1_4")
    a, b = new.decompress(data).astype(int), before.decompress(data).astype(int)
    assert np.abs(a - b).max() <= 1
    plain = Codec(before.model, correction=False).decompress(data).astype(int)
    assert np.abs(plain - b).max() > 1  # the correction network really ran in the one graph
    from hybridflow.runtime.model import Model, ModelError

    manifest["format_version"] = 6  # a newer format than this runtime knows: refused, not misread
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="model format 6 is not supported"):
        Model.load(old)
