"""Export's operator rewrites (models/layers.py, models/fusion.py): each computes the same function as the
training modules it replaces, and gives their weights back exactly (export/bundle_index.py rebuilds
training bundles through those inverses); and the int8 graphs' SiLU as one node (export/quantize.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


@pytest.mark.parametrize("k, s, p, op", [(5, 2, 2, 1), (3, 2, 1, 1), (4, 2, 1, 0), (6, 3, 2, 1)])
def test_subpixel_deconv_is_the_transposed_convolution(k: int, s: int, p: int, op: int) -> None:
    """What export runs instead of a transposed convolution (models/layers.py ``SubpixelDeconv``) gives the
    same output, edges and odd sizes included, and its weight gives the original back exactly (the
    bundle index rebuilds training bundles through that inverse)."""
    from hybridflow.models.layers import SubpixelDeconv

    torch.manual_seed(k + s)
    deconv = nn.ConvTranspose2d(6, 5, k, s, p, op)
    twin = SubpixelDeconv(deconv)
    for shape in [(2, 6, 7, 9), (1, 6, 1, 1), (1, 6, 2, 5)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref, got = deconv(x), twin(x)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    assert torch.equal(SubpixelDeconv.deconv_weight(twin.conv.weight.detach(), s, k, p), deconv.weight.detach())
    with pytest.raises(ValueError, match="transposed convolution"):
        SubpixelDeconv(nn.ConvTranspose2d(6, 5, 5, 2, 2, 0))  # output 2H − 1: not a whole phase grid


def test_shuffled_conv_is_the_convolution_after_the_shuffle() -> None:
    """``ShuffledConv`` equals convolving after the pixel shuffle; ``shuffled_convs`` rewrites only a narrow
    (output) convolution after shuffle → ReLU, and the rewritten network computes the same function."""
    from hybridflow.models.layers import ShuffledConv, shuffled_convs

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 3, 3, padding=1)
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        assert torch.allclose(ShuffledConv(conv, 2)(x), conv(F.pixel_shuffle(x, 2)), atol=1e-5)
    assert torch.equal(ShuffledConv.conv_weight(ShuffledConv(conv, 2).conv.weight.detach(), 2, 3), conv.weight.detach())
    up = nn.Sequential(nn.Conv2d(8, 128, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                       nn.PixelShuffle(2), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    x = torch.randn(1, 8, 6, 5)
    with torch.no_grad():
        ref = up(x)
        assert shuffled_convs(up) == 1  # the last one only: the 32 → 64 convolution would cost 4× its work
        assert isinstance(up[-1], ShuffledConv) and isinstance(up[3], nn.Conv2d)
        assert torch.allclose(up(x), ref, atol=1e-5)


@pytest.mark.parametrize("k, s, p", [(4, 2, 1), (2, 2, 0), (5, 3, 1), (6, 2, 2)])
def test_unshuffled_conv_is_the_strided_convolution(k: int, s: int, p: int) -> None:
    """``UnshuffledConv`` (pixel unshuffle, then a stride-1 convolution of the phases) equals the strided
    convolution on inputs whose sides are multiples of the stride, and gives its weight back."""
    from hybridflow.models.layers import UnshuffledConv

    torch.manual_seed(k)
    conv = nn.Conv2d(6, 5, k, s, p)
    twin = UnshuffledConv(conv)
    for h, w in [(4, 6), (1, 1), (2, 5)]:
        x = torch.randn(2, 6, h * s, w * s)
        with torch.no_grad():
            ref, got = conv(x), twin(x)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    assert torch.equal(UnshuffledConv.conv_weight(twin.conv.weight.detach(), s, k, p), conv.weight.detach())
    with pytest.raises(ValueError, match="exactly 1/2"):
        UnshuffledConv(nn.Conv2d(6, 5, 3, 2, 1))  # output ⌈H/2⌉ + …: not the phases' grid


@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_half_resolution_fusion_is_the_fusion(sigma: float) -> None:
    """What export writes as the fusion graph computes the trained fusion's function, anchor included."""
    from hybridflow.models.fusion import Fusion, FusionConfig, HalfResolutionFusion

    torch.manual_seed(1)
    fusion = Fusion(FusionConfig(channels=8, blocks=2, lowpass_sigma=sigma)).eval()
    torch.nn.init.normal_(fusion.out[-1].weight, std=0.1)  # (starts at zero: the identity)
    pixels, cont = torch.rand(2, 3, 22, 30) * 2 - 1, torch.rand(2, 3, 22, 30) * 2 - 1
    with torch.no_grad():
        ref, got = fusion(pixels, cont), HalfResolutionFusion(fusion)(pixels, cont)
    assert not torch.allclose(ref, pixels, atol=1e-3)  # the fusion really changes the picture
    assert torch.allclose(got, ref, atol=1e-5)


def test_silu_fused_into_one_node_runs_the_same(tmp_path) -> None:  # noqa: ANN001
    """``fuse_silu`` turns x·sigmoid(x) into onnxruntime's QuickGelu (alpha 1): one node instead of two,
    the same numbers to float rounding, and a Sigmoid with other readers is left alone."""
    import onnx
    import onnxruntime as ort

    from hybridflow.export.quantize import fuse_silu

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = torch.sigmoid(x + 1)
            return x * torch.sigmoid(x), (x + 1) * s + s  # the second Sigmoid has two readers

    path = tmp_path / "silu.onnx"
    torch.onnx.export(Net(), (torch.randn(1, 4, 5, 5),), str(path), input_names=["x"], output_names=["a", "b"],
                      opset_version=17, dynamo=False)
    model = onnx.load(path)
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert fuse_silu(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuickGelu") == 1 and ops.count("Sigmoid") == 1
    onnx.checker.check_model(model)
    fused = tmp_path / "fused.onnx"
    onnx.save(model, fused)
    got = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(ref, got):
        assert np.allclose(a, b, atol=1e-6)
