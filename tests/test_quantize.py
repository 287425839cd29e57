"""int8 variants of the decode-side graphs (export/quantize.py), on the tiny random model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from hybridflow.export import quantize  # noqa: E402
from hybridflow.export.cli import export_bundle  # noqa: E402


def _crops(photo: np.ndarray) -> list[np.ndarray]:
    """Three fixed 256²/512×256 crops: the photo fixture and two textured synthetic images."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:256, :512]
    synth = np.stack([np.sin(x / 9.0), np.cos(y / 13.0), np.sin((x - y) / 31.0)], -1) * 90 + 128
    synth = np.clip(synth + rng.normal(0, 12, synth.shape), 0, 255).astype(np.uint8)
    return [photo[:256, :256].copy(), synth, synth[:, ::-1][:, :256].copy()]


@pytest.fixture(scope="module")
def int8_model(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray) -> Path:
    out = tmp_path_factory.mktemp("int8") / "m"
    crops = _crops(photo)
    export_bundle(tiny_bundle, out, parity=False, int8=quantize.Int8Request(crops, crops[:1], max_psnr_loss=None))
    return out


@pytest.fixture(scope="module")
def photo() -> np.ndarray:  # module scope (the conftest one is per test)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:300, :420]
    base = np.stack([np.sin(x / 17.0), np.cos(y / 11.0), np.sin((x + y) / 23.0)], -1) * 80 + 128
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def test_manifest_lists_int8_variants_and_id_covers_them(int8_model: Path, tiny_model: Path) -> None:
    man = json.loads((int8_model / "manifest.json").read_text())
    fp32 = json.loads((tiny_model / "manifest.json").read_text())
    assert {"pixel_head", "pixel_tail"} <= set(quantize.applicable(fp32))
    for graph in quantize.applicable(fp32):
        entry = man["graphs"][graph + quantize.SUFFIX]
        assert entry["variant_of"] == graph and entry["precision"] == "int8"
        assert (int8_model / entry["file"]).stat().st_size == entry["bytes"]
        q = onnx.load(int8_model / entry["file"])
        int8_op = "MatMulInteger" if graph == "predictor" else "QuantizeLinear"  # dynamic / static
        assert any(n.op_type == int8_op for n in q.graph.node), graph
        assert man["parity"]["int8"][graph]["kept"]
    assert "predictor" in quantize.applicable(fp32)
    for graph in quantize.NEVER + ("cont_synthesis", "cont_reconstruct"):
        assert graph + quantize.SUFFIX not in man["graphs"]
    assert man["model_id"] != fp32["model_id"]  # same networks, different decoded pixels: another id


def test_int8_export_is_reproducible(tiny_bundle: Path, int8_model: Path, tmp_path: Path, photo: np.ndarray) -> None:
    crops = _crops(photo)
    man = export_bundle(tiny_bundle, tmp_path / "again", parity=False,
                        int8=quantize.Int8Request(crops, crops[:1], max_psnr_loss=None))
    assert man["model_id"] == json.loads((int8_model / "manifest.json").read_text())["model_id"]
    for graph in quantize.applicable(man):
        name = f"{graph}{quantize.SUFFIX}.onnx"
        assert (tmp_path / "again" / name).read_bytes() == (int8_model / name).read_bytes()


def test_float_noise_in_calibration_does_not_change_the_bytes(int8_model: Path, tmp_path: Path,
                                                              photo: np.ndarray) -> None:
    """Another CPU measures the calibration activations with different last bits: simulated by a
    relative 1e-6 of noise on the guidance; the snapped ranges, hence the file, must not move."""
    from hybridflow.runtime.model import Model

    model = Model.load(int8_model, provider="cpu")
    model.precision = "fp32"
    src = int8_model / "pixel_head.onnx"
    inputs = [quantize.graph_feeds(src, quantize.decoder_inputs(model, c)) for c in _crops(photo)]
    rng = np.random.default_rng(0)
    noisy = [{k: (v * (1 + rng.uniform(-1e-6, 1e-6, v.shape))).astype(v.dtype) if v.dtype == np.float32 else v
              for k, v in feeds.items()} for feeds in inputs]
    assert not np.array_equal(noisy[0]["guidance"], inputs[0]["guidance"])
    quantize.quantise_graph(src, tmp_path / "noisy.onnx", noisy, quantize.KEEP_FP32["pixel_head"](onnx.load(src)))
    assert (tmp_path / "noisy.onnx").read_bytes() == (int8_model / "pixel_head_int8.onnx").read_bytes()


def test_int8_decode_is_close_to_fp32_and_streams_are_unchanged(int8_model: Path, photo: np.ndarray) -> None:
    from hybridflow.runtime import Codec
    from hybridflow.runtime.model import Model
    from hybridflow.runtime.session import CPU

    int8 = Codec(Model.load(int8_model, provider="cpu"))
    fp32_model = Model.load(int8_model, provider="cpu")
    fp32_model.precision = "fp32"
    fp32 = Codec(fp32_model)
    for graph in ("pixel_head", "pixel_tail"):
        assert int8.model._variant(graph, CPU) == int8_model / f"{graph}_int8.onnx"
        assert fp32.model._variant(graph, CPU) is None
    for stream in ("hybrid", "vq"):
        a, b = int8.analyse(photo, "1_4", stream), fp32.analyse(photo, "1_4", stream)  # encoder side untouched
        assert np.array_equal(a.indices, b.indices)
        assert a.z_hat is None or (np.array_equal(a.z_hat, b.z_hat) and np.array_equal(a.y_residual, b.y_residual))
        data = int8.compress(photo, "1_4", stream)
        assert data == fp32.compress(photo, "1_4", stream)
        x, y = int8.decompress(data).astype(np.int16), fp32.decompress(data).astype(np.int16)
        assert x.shape == photo.shape
        assert quantize.psnr(x, y) > 35, stream  # random tiny model: ~1.5 levels mean difference


def test_precision_must_be_known(int8_model: Path) -> None:
    from hybridflow.runtime.model import Model, ModelError

    model = Model.load(int8_model, provider="cpu")
    model.precision = "int4"
    with pytest.raises(ModelError, match="precision"):
        model.session("pixel_tail")


def test_encoder_side_is_never_quantised(int8_model: Path) -> None:
    man = json.loads((int8_model / "manifest.json").read_text())
    with pytest.raises(ValueError, match="entropy path"):
        quantize.add_int8(int8_model, man, [np.zeros((256, 256, 3), np.uint8)], graphs=("vq_encoder",))


def test_snap_is_outward_exact_and_absorbs_float_noise() -> None:
    for v in (0.123456, 3.3, -7.77, 1e-5, -2.5e3, 1.0, -0.5):
        up, down = quantize.snap(v, up=True), quantize.snap(v, up=False)
        assert down <= v <= up
        assert up == float(np.float32(up)) and down == float(np.float32(down))
        assert abs(up - v) <= abs(v) * 2 ** (1 - quantize.RANGE_BITS)
        for noisy in (v * (1 + 1e-7), v * (1 - 1e-7)):
            assert quantize.snap(noisy, up=True) == up or math.isclose(v, up, rel_tol=1e-6)
    assert quantize.snap(0.0) == 0.0


def test_fp16_weights_behind_casts_are_folded() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantize.fold_fp16_casts(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    (init,) = model.graph.initializer
    assert init.name == "w" and np.array_equal(numpy_helper.to_array(init), w.astype(np.float32))
    assert quantize.output_convs(model) == ["conv"]


def test_cli_request(tmp_path: Path, photo: np.ndarray) -> None:
    import cv2

    assert quantize.request("none", tmp_path / "missing", None) is None
    with pytest.raises(ValueError, match="--quantize"):
        quantize.request("int4", tmp_path, None)
    with pytest.raises(ValueError, match="--calibration"):
        quantize.request("int8", tmp_path / "missing", None)
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"{k}.png"), np.roll(photo, 40 * k, axis=1)[:, :, ::-1])
    req = quantize.request("int8", tmp_path, tmp_path)
    assert len(req.calibration) == 3 and len(req.check) == 3
    assert all(c.shape == (256, 256, 3) for c in req.calibration)  # centred whole tiles of a 300×420 image


# ------------------------------------------------- the small decoder graphs: continuous picture, fusion
SMALL = ("pixel_head", "pixel_tail", "cont_reconstruct", "fusion")


def _small_export(bundle: Path, out: Path, photo: np.ndarray) -> dict:
    crops = _crops(photo)
    return export_bundle(bundle, out, parity=False,
                         int8=quantize.Int8Request(crops, crops[:1], max_psnr_loss=None, graphs=SMALL))


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a learned ×4 up-sampling and a fusion, both with non-zero last layers (they
    start at zero), so their quantised convolutions really change pixels."""
    import torch

    from hybridflow.models.bundle import save_bundle, tiny_components

    c = tiny_components(with_fusion=True, correction_stages=1)  # as shipped: a pixel tail worth quantising
    c.cont.add_upsampler(8)
    torch.manual_seed(2)
    torch.nn.init.normal_(c.cont.upsampler.up[-1].weight, std=0.05)
    path = tmp_path_factory.mktemp("int8-small") / "tiny.pt"
    save_bundle(path, c)
    return path


@pytest.fixture(scope="module")
def small_model(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray) -> Path:
    out = tmp_path_factory.mktemp("int8-small-model") / "m"
    _small_export(small_bundle, out, photo)
    return out


def test_small_decoder_graphs_get_int8_variants_the_runtime_uses(small_model: Path) -> None:
    from hybridflow.runtime.model import Model
    from hybridflow.runtime.session import CPU

    man = json.loads((small_model / "manifest.json").read_text())
    assert man["reconstruct_pixels"] == 1  # the learned up-sampling: full-resolution pixels
    model = Model.load(small_model, provider="cpu")
    fp32 = Model.load(small_model, provider="cpu")
    fp32.precision = "fp32"
    for graph in SMALL:
        entry = man["graphs"][graph + quantize.SUFFIX]
        assert entry["variant_of"] == graph and entry["precision"] == "int8"
        assert entry["inputs"] == man["graphs"][graph]["inputs"]
        assert (small_model / entry["file"]).stat().st_size == entry["bytes"]
        q = onnx.load(small_model / entry["file"])
        assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 2, graph
        report = man["parity"]["int8"][graph]
        assert report["kept"] and report["quantisation"]["calibration_feeds"] == 3
        assert model._variant(graph, CPU) == small_model / entry["file"]
        assert fp32._variant(graph, CPU) is None
    assert "vq_decoder" + quantize.SUFFIX not in man["graphs"]  # not asked for


def test_fusion_runs_at_half_resolution_and_quantises_all_but_its_anchor(small_model: Path) -> None:
    """The fusion is exported at half resolution (models/fusion.py ``HalfResolutionFusion``): no convolution
    reads the pictures' resolution (Q/DQ pairs there held extra full-size copies, one 832² window 231 →
    386 MB). Its int8 variant quantises every convolution but the low-frequency anchor's blurs, its
    12-channel output one padded to 16 channels and sliced back (``pad_narrow_convs``), and its Concats
    (uint8 in, uint8 out)."""
    fp32 = onnx.load(small_model / "fusion.onnx")
    convs = {n.name for n in fp32.graph.node if n.op_type == "Conv"}
    assert not quantize.full_resolution_convs(fp32)
    keep = set(quantize.fusion_fp32_convs(fp32))
    anchor = {n for n in convs if "/lowpass/" in n}
    assert len(anchor) == 4 and keep == anchor  # two 1-D blurs, of the difference and of ones (at half resolution)
    q = onnx.load(small_model / "fusion_int8.onnx")
    dequantised = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = {n.name for n in q.graph.node if n.op_type == "Conv" and n.input[1] in dequantised}
    assert int8 == convs - keep and int8
    concats = [n for n in q.graph.node if n.op_type == "Concat"]  # of the two pictures; of features and phases
    assert len(concats) == 2 and all(set(n.input) <= dequantised for n in concats)
    (out,) = [n for n in q.graph.node if n.name.endswith("/out2/Conv")]
    (cut,) = [n for n in q.graph.node if out.output[0] in n.input]
    assert cut.op_type == "QuantizeLinear"  # then DequantizeLinear, then the Slice back to 12 channels
    assert any(n.op_type == "Slice" and n.name.endswith("/out2/Conv/slice") for n in q.graph.node)


def test_padding_a_narrow_convolution_changes_no_output(tmp_path: Path) -> None:
    """``pad_narrow_convs``: zero filters up to 16 channels and a Slice back give the same numbers."""
    import onnxruntime as ort
    import torch

    conv = torch.nn.Conv2d(5, 6, 3, padding=1)
    path = tmp_path / "c.onnx"
    torch.onnx.export(conv, (torch.randn(1, 5, 7, 7),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    model = onnx.load(path)
    name = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert quantize.pad_narrow_convs(model, [name]) == [name]
    onnx.checker.check_model(model)
    padded = tmp_path / "p.onnx"
    onnx.save(model, padded)
    x = np.random.default_rng(0).standard_normal((1, 5, 7, 7)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    assert run(padded).shape == (1, 6, 7, 7) and np.allclose(run(padded), run(path), atol=1e-6)


def test_fusion_calibration_feeds_are_the_pictures_it_merges_at_decode(small_model: Path, photo: np.ndarray) -> None:
    """The fusion's calibration inputs equal the two pictures the runtime hands it when decoding the
    crop's hybrid stream (mask none, base rate: the same tokens and latent the feeds are built from)."""
    from hybridflow.runtime import Codec
    from hybridflow.runtime.model import Model

    model = Model.load(small_model, provider="cpu")
    model.precision = "fp32"
    codec = Codec(model)
    for crop in _crops(photo)[:2]:
        feeds = quantize.decoder_inputs(model, crop, ("fusion",))
        pictures = codec.pictures(codec.compress(crop, "none", "hybrid"))
        for name, picture in (("pixels", "tokens"), ("continuous", "continuous")):
            got = np.rint(feeds[name][0].transpose(1, 2, 0) * 255).astype(np.int16)
            assert got.shape == crop.shape
            assert np.abs(got - pictures[picture]).max() <= 1, name  # windowed vs whole: float noise at most
            assert (got == pictures[picture]).mean() > 0.999, name
    assert "pixels" not in quantize.decoder_inputs(model, _crops(photo)[0])  # only computed when needed


def test_small_graphs_int8_decode_is_close_to_fp32(small_model: Path, photo: np.ndarray) -> None:
    from hybridflow.runtime import Codec
    from hybridflow.runtime.model import Model

    int8 = Codec(Model.load(small_model, provider="cpu"))
    fp32_model = Model.load(small_model, provider="cpu")
    fp32_model.precision = "fp32"
    fp32 = Codec(fp32_model)
    for stream in ("hybrid", "continuous"):  # continuous: cont_reconstruct alone; hybrid: all three
        data = int8.compress(photo, "1_4" if stream == "hybrid" else "none", stream)
        assert data == fp32.compress(photo, "1_4" if stream == "hybrid" else "none", stream)
        x, y = int8.decompress(data).astype(np.int16), fp32.decompress(data).astype(np.int16)
        assert x.shape == y.shape == photo.shape
        assert not np.array_equal(x, y), stream  # the int8 variants really ran
        assert quantize.psnr(x, y) > 35, stream


def test_small_graphs_int8_export_is_reproducible(small_bundle: Path, small_model: Path, tmp_path: Path,
                                                  photo: np.ndarray) -> None:
    man = _small_export(small_bundle, tmp_path / "again", photo)
    assert man["model_id"] == json.loads((small_model / "manifest.json").read_text())["model_id"]
    for graph in SMALL:
        name = f"{graph}{quantize.SUFFIX}.onnx"
        assert (tmp_path / "again" / name).read_bytes() == (small_model / name).read_bytes(), graph


def test_only_known_decoder_graphs_are_quantised(int8_model: Path) -> None:
    man = json.loads((int8_model / "manifest.json").read_text())
    with pytest.raises(ValueError, match="no calibration inputs"):
        quantize.add_int8(int8_model, man, [np.zeros((256, 256, 3), np.uint8)], graphs=("cont_synthesis",))
    # a model without a learned up-sampling draws its continuous picture at low resolution: no variant
    assert "reconstruct_pixels" not in man
    assert quantize.add_int8(int8_model, man, [np.zeros((256, 256, 3), np.uint8)], graphs=("cont_reconstruct",)) == {}


def test_unquantised_weights_are_stored_in_fp16_without_changing_a_bit(small_model: Path, tmp_path: Path) -> None:
    """The deconvolutions and output convolutions an int8 variant keeps in float are stored as fp16
    (+ Cast), as in the fp32 graph: folding them back to float32 gives the very same outputs."""
    from hybridflow.runtime.session import CPU, open_session

    man = json.loads((small_model / "manifest.json").read_text())
    assert man["parity"]["int8"]["cont_reconstruct"]["quantisation"]["fp16_initialisers"] > 0
    path = small_model / "cont_reconstruct_int8.onnx"
    q = onnx.load(path)
    assert quantize.fold_fp16_casts(q) > 0
    onnx.save(q, tmp_path / "folded.onnx")
    g = np.random.default_rng(3).normal(0, 1, (1, man["guidance_channels"], 6, 7)).astype(np.float32)
    a = open_session(path, CPU, threads=1).run(None, {"guidance": g})[0]
    b = open_session(tmp_path / "folded.onnx", CPU, threads=1).run(None, {"guidance": g})[0]
    assert np.array_equal(a, b)


# ----------------------------------------------------------------- the predictor's int8 weights
def test_int8_rounding_is_exact_in_fp16_and_idempotent() -> None:
    """Power-of-two scales per output channel: every rounded weight is an fp16 value (so the fp16
    bundle holds exactly what the graphs compute with), and rounding again changes nothing (so a
    rebuilt bundle exports to the same bytes)."""
    from hybridflow.export.int8_weights import MIN_SCALE, dequantise, round_columns

    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 40)).astype(np.float32) * np.logspace(-9, 1, 40, dtype=np.float32)
    w = w.astype(np.float16).astype(np.float32)
    w[:, 3] = 0
    q, scale = round_columns(w, axis=1)
    assert q.dtype == np.int8 and int(np.abs(q.astype(int)).max()) <= 127 and scale.shape == (40,)
    assert np.array_equal(np.exp2(np.round(np.log2(scale))), scale)  # powers of two
    r = dequantise(q, scale)
    assert np.array_equal(r.astype(np.float16).astype(np.float32), r)
    assert np.all(np.abs(r - w) <= scale / 2)
    wide = scale > MIN_SCALE  # columns not at fp16's smallest step use at least 7 of the 8 bits
    assert np.all(np.abs(q.astype(int)).max(0)[wide] >= 64) and wide.sum() > 20
    q2, scale2 = round_columns(r, axis=1)
    assert np.array_equal(q2, q) and np.array_equal(scale2, scale)
    assert np.array_equal(round_columns(w.T, axis=0)[0], q.T)  # the axis is the output channel's


def test_predictor_linear_layers_are_int8_in_both_graphs(int8_model: Path, tiny_bundle: Path) -> None:
    """The fp32 predictor stores every linear weight as int8 + scales (half of fp16's bytes); its int8
    variant multiplies by the very same int8 values and scales; the codebook products stay float."""
    from onnx import numpy_helper

    from hybridflow.export.grids import components
    from hybridflow.export.int8_weights import linear_keys, stored_int8
    from hybridflow.models import checkpoint

    linear = linear_keys(components(checkpoint.load(tiny_bundle), tiny_bundle).predictor)
    man = json.loads((int8_model / "manifest.json").read_text())
    stored = stored_int8(onnx.load(int8_model / "predictor.onnx"))
    assert len(stored) == len(linear) == man["graphs"]["predictor"]["int8_weights"]
    q8 = onnx.load(int8_model / "predictor_int8.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in q8.graph.initializer}
    for name, (q, scale, _) in stored.items():
        assert np.array_equal(inits[f"{name}_quantized"], q) and np.array_equal(inits[f"{name}_scale"], scale)
    ops = [n.op_type for n in q8.graph.node]
    assert ops.count("MatMulInteger") == len(stored)
    report = man["parity"]["int8"]["predictor"]["quantisation"]
    assert report["int8_products"] == len(stored) and report["float_products"] >= 2  # ≥ the two codebook products


def test_predictor_int8_variant_runs_on_the_cpu_and_stays_close(int8_model: Path, photo: np.ndarray) -> None:
    from hybridflow.runtime import Codec
    from hybridflow.runtime.model import Model
    from hybridflow.runtime.session import CPU

    int8 = Model.load(int8_model, provider="cpu")
    fp32 = Model.load(int8_model, provider="cpu")
    fp32.precision = "fp32"
    assert int8._variant("predictor", CPU) == int8_model / "predictor_int8.onnx"
    feeds = quantize.decoder_inputs(fp32, photo[:256, :256])
    g = feeds["indices"].shape[1]
    feed = {"indices": feeds["indices"], "visible": np.arange(g * g).reshape(1, g, g) % 4 == 0,
            "guidance": feeds["guidance"]}
    a, b = fp32.run("predictor", **feed)[0], int8.run("predictor", **feed)[0]
    assert not np.array_equal(a, b)  # the int8 products really ran
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    data = Codec(int8).compress(photo, "1_4", "hybrid")
    x, y = Codec(int8).decompress(data), Codec(fp32).decompress(data)
    assert x.shape == y.shape == photo.shape and quantize.psnr(x, y) > 30
