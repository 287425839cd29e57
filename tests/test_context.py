"""The channel-wise context of the continuous latent (models/context.py, runtime/slices.py): training
only the context, and what it changes in streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_context_only_training_moves_only_the_context(synthetic_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A context-only run from a codec with rate points: every codec weight and gain stays bit-identical,
    the new context's networks move, validation covers every point, and the checkpoint builds a codec
    with the context (what ``hf-train bundle`` reads)."""
    import torch

    from hybridflow.models import checkpoint
    from hybridflow.models.hyperprior import ContConfig, ContinuousCodec
    from hybridflow.models.train import stage1_cont
    from hybridflow.models.train.loop import read_log

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    torch.manual_seed(0)
    cfg = ContConfig(channels=16, latent=16, hyper=8, rate_points=3, base_rate=1)
    codec = ContinuousCodec(cfg)
    with torch.no_grad():  # an untrained analysis gives y ≈ 0: make y carry bits
        codec.g_a[-1].weight.mul_(300)
    gain = torch.tensor([0.5, 1.0, 2.0])[:, None].expand(3, 16)
    codec.set_rate_gains(gain, 1 / gain)
    checkpoint.save(tmp_path / "cont.pt", model=codec.state_dict(), config=cfg, kind="cont")
    train_cfg = stage1_cont.ContTrainConfig(steps=6, batch=4, val_every=3, lr=1e-2, init=str(tmp_path / "cont.pt"),
                                            context_only=True)
    with pytest.raises(ValueError, match="--context-slices"):
        stage1_cont.train(tmp_path / "none", train_cfg, ContConfig(), tmp_path / "cache")
    stage1_cont.train(tmp_path / "run", train_cfg, ContConfig(context_slices=4, context_hidden=8), tmp_path / "cache")

    before = checkpoint.load(tmp_path / "cont.pt")["model"]
    ck = checkpoint.load(tmp_path / "run" / "last.pt")
    trained = checkpoint.build_model(ck, ContinuousCodec, ContConfig)
    assert (trained.cfg.context_slices, trained.cfg.context_hidden, trained.cfg.rate_points) == (4, 8, 3)
    for name, value in before.items():
        assert torch.equal(value, ck["model"][name]), name
    last = [k for k in ck["model"] if k.startswith("context.") and k.endswith(".4.weight")]
    assert last and all(ck["model"][k].abs().max() > 0 for k in last)  # zero at the start, learnt since
    records = read_log(tmp_path / "run")
    assert len([r for r in records if "val_bpp" in r][-1]["val_bpp"]) == 3

    # a second run from it at the base point only goes on with the same context (not a fresh one)
    import dataclasses

    more = dataclasses.replace(train_cfg, init=str(tmp_path / "run" / "last.pt"), context_points="1", lr=1e-6)
    stage1_cont.train(tmp_path / "base", more, ContConfig(), tmp_path / "cache")
    again = checkpoint.load(tmp_path / "base" / "last.pt")["model"]
    assert all((again[k] - ck["model"][k]).abs().max() < 0.1 * ck["model"][k].abs().max() for k in last)
    with pytest.raises(ValueError, match="points 0…2"):
        stage1_cont.train(tmp_path / "bad", dataclasses.replace(more, context_points="3"), ContConfig(),
                          tmp_path / "cache")


def test_context_changes_the_stream_not_its_meaning(codec, photo: np.ndarray) -> None:  # noqa: ANN001
    """The tiny test model has a (random) context: its streams decode to the encoder's ŷ, and coding the
    same analysis without the context gives other bytes (so the context is really in the path)."""
    from hybridflow.runtime import slices

    assert codec.model.context is not None and codec.model.manifest["format_version"] == 5
    img = photo[:200, :300]
    data = codec.compress(img, stream="continuous")
    assert codec.decompress(data).shape == img.shape
    sym = codec.analyse(img, stream="continuous")
    point = codec.model.rate_point(sym.header.rate)
    mean, scale = codec.model.hyper(sym.z_hat)
    plain = slices.walk(None, codec.model.tables, point, mean, scale, lambda part, here, mu, std: sym.y_residual[part])
    with_ctx = slices.walk(codec.model.context, codec.model.tables, point, mean, scale,
                           lambda part, here, mu, std: sym.y_residual[part])
    assert np.array_equal(with_ctx.std, sym.y_scale)
    assert not np.array_equal(plain.std, with_ctx.std)


def test_context_points_keep_repeats_as_weights() -> None:
    from hybridflow.models.train.stage1_cont import _points

    assert _points("4,3,3", 9).tolist() == [3, 3, 4]  # point 3 takes two thirds of each batch
    with pytest.raises(ValueError, match="points 0…8"):
        _points("3,9", 9)
