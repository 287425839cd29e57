"""Rate points of the continuous stream (runtime/rates.py, models/hyperprior.py): training only the
gains, carrying them through bundle → export → manifest, and coding at every point."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime import rates
from hybridflow.runtime.model import Model, ModelError


# ---------------------------------------------------------------------------------- training
def test_gains_only_training_moves_only_the_gains(synthetic_data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A gains-only run from a fixed-rate codec: every network weight stays bit-identical, the base
    point stays exactly 1, the other points' gains move, validation covers every point, and a rerun
    from its checkpoint starts from the learnt gains."""
    import torch

    from hybridflow.models import checkpoint
    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec
    from hybridflow.models.train import stage1_cont
    from hybridflow.models.train.loop import read_log

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    torch.manual_seed(0)
    cfg = ContConfig(channels=16, latent=16, hyper=8)
    codec = ContinuousCodec(cfg)
    with torch.no_grad():  # an untrained analysis gives y ≈ 0, which no gain changes: make y carry bits
        codec.g_a[-1].weight.mul_(300)
    checkpoint.save(tmp_path / "cont.pt", model=codec.state_dict(), config=cfg, kind="cont")
    train_cfg = stage1_cont.ContTrainConfig(steps=6, batch=4, val_every=3, init=str(tmp_path / "cont.pt"),
                                            gains_only=True, gain_step=1.5, gain_lr=0.05)
    # the points come from the model config (--rate-points/--base-rate), every other field from --init
    stage1_cont.train(tmp_path / "run", train_cfg, ContConfig(rate_points=3, base_rate=1), tmp_path / "cache")

    before = checkpoint.load(tmp_path / "cont.pt")["model"]
    ck = checkpoint.load(tmp_path / "run" / "last.pt")
    trained = checkpoint.build_model(ck, ContinuousCodec, ContConfig)
    assert (trained.cfg.rate_points, trained.cfg.base_rate, trained.cfg.latent) == (3, 1, 16)
    for name, value in before.items():
        assert torch.equal(value, ck["model"][name]), name
    one = 1 << rates.GAIN_BITS
    assert (trained.rate_gain[1] == one).all() and (trained.rate_inv_gain[1] == one).all()
    gain = trained.rate_gain.double() / one
    start = torch.tensor([1 / 1.5, 1.5], dtype=torch.float64)[:, None]
    assert (gain[[0, 2]] - start).abs().max() > 1e-3  # learnt, not the geometric start
    assert (gain[0] < 1).all() and (gain[2] > 1).all()
    records = read_log(tmp_path / "run")
    val = [r for r in records if "val_bpp" in r][-1]
    assert len(val["val_bpp"]) == 3 and val["val_bpp"][0] < val["val_bpp"][1] < val["val_bpp"][2]

    # a new run from the trained checkpoint (e.g. cont.pt of hf-train unbundle) starts from its gains
    again = stage1_cont.RatePoints(trained, 6.0, 2.7, 1.5)
    assert torch.allclose(again.log_gain.exp().double(), gain.float().double(), atol=1e-6)

    # extending it by two points above the top keeps its three points' integer gains exactly
    more = dataclasses.replace(train_cfg, init=str(tmp_path / "run" / "last.pt"))
    stage1_cont.train(tmp_path / "more", more, ContConfig(rate_points=5, base_rate=1), tmp_path / "cache")
    five = checkpoint.build_model(checkpoint.load(tmp_path / "more" / "last.pt"), ContinuousCodec, ContConfig)
    assert torch.equal(five.rate_gain[:3], trained.rate_gain)
    assert torch.equal(five.rate_inv_gain[:3], trained.rate_inv_gain)
    top = five.rate_gain.double() / one
    assert (top[3] > top[2]).all() and (top[4] > top[3]).all()
    assert (top[3:] - top[2] * torch.tensor([[1.5], [2.25]], dtype=torch.float64)).abs().max() > 1e-3  # learnt


def test_fixed_rate_checkpoints_load_as_before() -> None:
    """A codec with one point has no gain buffers: old checkpoints and bundles load strictly."""
    import torch

    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec

    one = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8))
    assert not any(k.startswith("rate_") for k in one.state_dict())
    three = ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=2))
    three.load_state_dict({**one.state_dict(), "rate_gain": three.rate_gain, "rate_inv_gain": three.rate_inv_gain})
    x = torch.rand(1, 3, 64, 64)
    one.eval(), three.eval()
    assert torch.equal(one(x)["x_hat"], three(x, three.rate_gains(2))["x_hat"])  # base point = no gains
    with pytest.raises(ValueError, match="base_rate"):
        ContinuousCodec(ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=3))


# ---------------------------------------------------------------------------------- manifest
def test_export_carries_the_gains(tiny_bundle: Path, tiny_model: Path) -> None:
    from hybridflow.models.bundle import load_bundle

    c = load_bundle(tiny_bundle)
    man = json.loads((tiny_model / "manifest.json").read_text())
    assert man["base_rate"] == c.cont.cfg.base_rate == 1 and len(man["rate_points"]) == 3
    for k, point in enumerate(man["rate_points"]):
        assert point["gain"] == (c.cont.rate_gain[k].double() / (1 << rates.GAIN_BITS)).tolist()
        assert point["inv_gain"] == (c.cont.rate_inv_gain[k].double() / (1 << rates.GAIN_BITS)).tolist()
    model = Model.load(tiny_model, provider="cpu")
    assert (model.rate_points, model.base_rate) == (3, 1)
    assert model.rate_point(1) is rates.BASE
    assert np.all(model.rate_point(0).gain < 1) and np.all(model.rate_point(2).gain > 1)


def _edited(tiny_model: Path, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    out = tmp_path / "edited"
    shutil.copytree(tiny_model, out)
    man = json.loads((out / "manifest.json").read_text())
    edit(man)
    (out / "manifest.json").write_text(json.dumps(man))
    return out


def _set(key: str, value: object):  # noqa: ANN202
    def edit(man: dict) -> None:
        man[key] = value
    return edit


def _point(k: int, field: str, value: object):  # noqa: ANN202
    def edit(man: dict) -> None:
        man["rate_points"][k][field] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set("base_rate", 3), "base_rate"),
    (_set("base_rate", True), "base_rate"),
    (_set("base_rate", 0), "base point: its gains must be exactly 1"),
    (_set("rate_points", []), "rate_points must be a list"),
    (_point(0, "gain", [0.5] * 15), "must hold 16 values"),
    (_point(0, "gain", [0.5] * 15 + [0.1]), "multiples of 2\\^-12"),
    (_point(2, "inv_gain", [0.5] * 15 + [0.0]), "positive"),
    (_point(2, "inv_gain", [0.5] * 15 + [1024.0]), "at most 256"),
    (_point(1, "gain", [1.0] * 15 + [0.5]), "base point"),
])
def test_manifest_rate_points_are_checked(tiny_model: Path, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match=message):
        Model.load(_edited(tiny_model, tmp_path, edit), provider="cpu")


def test_manifest_without_rate_points_has_one_base_point(tiny_model: Path, tmp_path: Path) -> None:
    def drop(man: dict) -> None:
        del man["rate_points"], man["base_rate"]

    model = Model.load(_edited(tiny_model, tmp_path, drop), provider="cpu")
    assert (model.rate_points, model.base_rate) == (1, 0) and model.rate_point(0) is rates.BASE
    with pytest.raises(ValueError, match="rate point 1 does not exist"):
        model.rate_point(1)


# ---------------------------------------------------------------------------------- codec
@pytest.mark.parametrize("stream", ["hybrid", "continuous"])
def test_round_trip_at_every_rate_point(codec, photo: np.ndarray, stream: str) -> None:  # noqa: ANN001
    """Each point decodes to exactly the symbols it coded; finer points cost more bits."""
    from hybridflow.runtime.entropy import Decoder

    sizes = []
    for rate in range(codec.model.rate_points):
        sym = codec.analyse(photo, mask="1_4", stream=stream, rate=rate)
        data = codec.entropy_code(sym)
        assert codec.info(data).rate == rate and data[8] == rate
        header, words, _ = codec.read_header(data)
        dec = Decoder(codec.model.tables, words)
        np.testing.assert_array_equal(dec.pop_z(sym.z_hat.shape), sym.z_hat)
        np.testing.assert_array_equal(dec.pop_y(sym.y_scale), sym.y_residual)
        out = codec.decompress(data)
        assert out.shape == photo.shape and out.dtype == np.uint8
        sizes.append(len(data))
    assert sizes[0] < sizes[1] < sizes[2]
    assert codec.compress(photo, mask="1_4", stream=stream) == codec.compress(photo, mask="1_4", stream=stream,
                                                                               rate=codec.model.base_rate)


def test_decoder_applies_the_inverse_gain(codec, photo: np.ndarray) -> None:  # noqa: ANN001
    """ŷ = (q + μ·gain)·inv_gain is what reaches the synthesis: a stream decoded with the gain of
    another point gives other guidance (so a wrong or ignored rate byte cannot go unnoticed)."""
    from hybridflow.runtime.codec import Decoded
    from hybridflow.runtime.entropy import Decoder
    from hybridflow.runtime.tiling import TileGrid

    data = codec.compress(photo, stream="continuous", rate=0)
    header, words, _ = codec.read_header(data)
    grid = TileGrid(header.height, header.width)
    guidance = {}
    for label, rate in (("right", 0), ("wrong", codec.model.base_rate)):
        header.rate, got = rate, Decoded()
        codec.continuous.pop(Decoder(codec.model.tables, words), header, grid, got)
        codec.continuous.synthesise(got)
        guidance[label] = got.guidance
    assert np.abs(guidance["right"] - guidance["wrong"]).max() > 1e-3


def test_base_point_codes_exactly_as_a_model_without_rate_points(codec, tiny_model: Path, tmp_path: Path,  # noqa: ANN001
                                                                 photo: np.ndarray) -> None:
    """The same graphs without ``rate_points`` in the manifest: the base point's payload (every ANS
    word) and decoded pixels are those of the fixed-rate model; only the header's rate byte differs."""
    from hybridflow.runtime import Codec, bitstream

    def drop(man: dict) -> None:
        del man["rate_points"], man["base_rate"]

    plain = Codec.load(_edited(tiny_model, tmp_path, drop), provider="cpu")
    assert plain.model.rate_points == 1
    for stream, mask in (("hybrid", "1_4"), ("continuous", "none"), ("vq", "none")):
        with_points = codec.compress(photo, mask=mask, stream=stream)
        without = plain.compress(photo, mask=mask, stream=stream)
        h1, w1, _ = bitstream.read(with_points)
        h2, w2, _ = bitstream.read(without)
        assert (h1.rate, h2.rate) == (codec.model.base_rate, 0)
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(codec.decompress(with_points), plain.decompress(without))


def _with_rate(data: bytes, rate: int) -> bytes:
    import zlib

    body = bytearray(data[:-4])
    body[8] = rate
    return bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little")


def test_rate_byte_is_checked_against_the_model(codec, photo: np.ndarray) -> None:  # noqa: ANN001
    from hybridflow.runtime.bitstream import BitstreamError

    data = codec.compress(photo, mask="1_4", rate=2)
    for bad in (3, 17, 255):
        with pytest.raises(BitstreamError, match=f"rate point {bad}, but model .* has 3 \\(0…2\\)"):
            codec.decompress(_with_rate(data, bad))
    vq = codec.compress(photo, mask="1_4", stream="vq")
    assert vq[8] == codec.model.base_rate
    with pytest.raises(BitstreamError, match="vq stream carries its model's base rate point 1, not 0"):
        codec.decompress(_with_rate(vq, 0))


def test_rate_argument_is_checked(codec, photo: np.ndarray) -> None:  # noqa: ANN001
    img = photo[:64, :64]
    for bad in (3, -1, True, 1.0, "1"):
        with pytest.raises(ValueError, match="rate point .* does not exist"):
            codec.compress(img, rate=bad)
    with pytest.raises(ValueError, match="vq stream has no continuous stream"):
        codec.compress(img, stream="vq", rate=0)
    # the base point is fine (a mask, not auto: auto without a rate is capped at 0.05 bpp, ratecontrol.py)
    assert codec.compress(img, mask="1_4", stream="vq", rate=1) == codec.compress(img, mask="1_4", stream="vq")
    # a rate point is taken literally, like a mask: auto at that point, not capped
    assert codec.compress(img, rate=1) == codec.entropy_code(codec.analyse(img, "auto", "hybrid", None, 1))
    assert len(codec.compress(img, rate=1)) > len(codec.compress(img))


def test_entropy_parameters_agree_across_processes_and_threads(tiny_model: Path, photo: np.ndarray,
                                                               tmp_path: Path) -> None:
    """Streams at every point written in another process (1 thread, no graph optimisation, another
    BLAS thread count) are byte-identical to this process's and decode here; so are streams written
    by concurrent threads at different points."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from hybridflow.runtime import Codec

    np.save(tmp_path / "photo.npy", photo)
    script = (
        "import sys, numpy as np\n"
        "from hybridflow.runtime import Codec\n"
        "c = Codec.load(sys.argv[1], provider='cpu', threads=1, optimise=False)\n"
        "img = np.load(sys.argv[2])\n"
        "for k in range(c.model.rate_points):\n"
        "    open(f'{sys.argv[3]}/{k}.hfc', 'wb').write(c.compress(img, mask='1_4', rate=k))\n")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(tiny_model), str(tmp_path / "photo.npy"), str(tmp_path)],
                   check=True, timeout=300, env=env)
    here = Codec.load(tiny_model, provider="cpu", threads=2, optimise=True)
    points = range(here.model.rate_points)
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda k: here.compress(photo, mask="1_4", rate=k), points))
    for k in points:
        other = (tmp_path / f"{k}.hfc").read_bytes()
        assert other == here.compress(photo, mask="1_4", rate=k) == threaded[k]
        assert here.decompress(other).shape == photo.shape


# ---------------------------------------------------------------------------------- CLI
def test_cli_rate_option(tiny_model: Path, tmp_path: Path, photo: np.ndarray) -> None:
    import cv2

    from .test_cli import assert_clean_error, run

    png = tmp_path / "photo.png"
    cv2.imwrite(str(png), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    sizes = {}
    for rate in (0, 2):
        hfc = tmp_path / f"r{rate}.hfc"
        p = run("compress", png, hfc, "--model", tiny_model, "--rate", rate)
        assert p.returncode == 0, p.stderr
        sizes[rate] = hfc.stat().st_size
        p = run("info", hfc, "--model", tiny_model)
        assert p.returncode == 0 and f"rate point {rate} of 3 (0…2, base 1)" in p.stdout, p.stdout
    assert sizes[0] < sizes[2]
    assert_clean_error(run("compress", png, tmp_path / "x.hfc", "--model", tiny_model, "--rate", 3),
                       "--rate: rate point 3 does not exist: model tiny-random-0 has 3 (0…2, base 1)")
    assert_clean_error(run("compress", png, tmp_path / "x.hfc", "--model", tiny_model, "--rate", 0, "--stream", "vq"),
                       "--rate: a vq stream has no continuous stream")
    assert not (tmp_path / "x.hfc").exists()
    p = run("compress", "--help")
    assert "--rate" in p.stdout and "base point" in p.stdout


def test_rate_points_leave_the_graphs_unchanged(tmp_path: Path) -> None:
    """The gains travel in the manifest only: the continuous codec's graphs export to the same bytes
    with and without rate points (so adding points to a model changes no network)."""
    import dataclasses

    from hybridflow.export import convert
    from hybridflow.export.graphs import graph_specs
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.hyperprior import ContinuousCodec

    c = tiny_components()
    fixed = ContinuousCodec(dataclasses.replace(c.cont.cfg, rate_points=1, base_rate=0)).eval()
    fixed.load_state_dict({k: v for k, v in c.cont.state_dict().items() if not k.startswith("rate_")})
    plain = dataclasses.replace(c, cont=fixed)
    for with_points, without in zip(graph_specs(c), graph_specs(plain)):
        if with_points.name.startswith(("cont", "hyper")):
            a, b = tmp_path / f"{with_points.name}_a.onnx", tmp_path / f"{with_points.name}_b.onnx"
            convert.to_onnx(with_points, a, True)
            convert.to_onnx(without, b, True)
            assert a.read_bytes() == b.read_bytes(), with_points.name
    assert "rate_gain" in c.cont.state_dict()  # exporting left the model's own gains in place
