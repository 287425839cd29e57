"""The correction network may feed only the first (coarse) up-sampling stages: a shallower network is
exactly the first stages of a deeper one, says its depth through its weights, and exports to a pixel
decoder graph with less work that the runtime decodes like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_a_shallower_correction_is_the_first_stages_of_a_deeper_one() -> None:
    import torch

    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.correction import CorrectionNet, PixelDecoder

    c = tiny_components(seed=1)
    full = c.correction
    assert full.stages == len(c.vq.decoder.ups) == CorrectionNet.stages_in(full.state_dict())
    shallow = CorrectionNet.from_state(c.vq.cfg, c.cont.cfg.channels, full.state_dict(), stages=2)
    assert shallow.stages == 2 == CorrectionNet.stages_in(shallow.state_dict())
    again = CorrectionNet.from_state(c.vq.cfg, c.cont.cfg.channels, shallow.state_dict())  # depth from weights
    assert again.stages == 2

    codes, g = torch.randn(1, c.vq.cfg.code_dim, 4, 4), torch.randn(1, c.cont.cfg.channels, 4, 4)
    with torch.no_grad():
        want = c.vq.decoder(codes, full(g)[:2])
        got = PixelDecoder(c.vq, shallow)(codes, g)
        deeper = PixelDecoder(c.vq, full)(codes, g)
    assert torch.equal(got, want)
    assert not torch.allclose(got, deeper)  # the fine stages' correction is really gone
    # checkpoints from before session 15 carried the decoder's unused output layers: they still load
    old = dict(full.state_dict(), **{"decoder.conv_out.weight": torch.zeros(3, 16, 3, 3)})
    assert CorrectionNet.from_state(c.vq.cfg, c.cont.cfg.channels, old).stages == full.stages
    with pytest.raises(ValueError, match="stages"):
        CorrectionNet(c.vq.cfg, c.cont.cfg.channels, 5)


def test_a_shallow_correction_exports_with_less_work_and_decodes(tiny_model: Path, tmp_path: Path) -> None:
    import onnx

    from hybridflow.export.cli import export_bundle
    from hybridflow.models.bundle import save_bundle, tiny_components
    from hybridflow.runtime import Codec

    save_bundle(tmp_path / "shallow.pt", tiny_components(correction_stages=2))
    man = export_bundle(tmp_path / "shallow.pt", tmp_path / "model2", timing=False)  # parity: ONNX vs PyTorch
    assert man["parity"]["graphs"]["pixel_tail"]["random"]["image"]["max_abs"] < 1e-3
    convs = {name: sum(n.op_type == "Conv" for g in ("pixel_head", "pixel_tail")
                       for n in onnx.load(folder / f"{g}.onnx").graph.node)
             for name, folder in (("one", tiny_model), ("shallow", tmp_path / "model2"))}
    assert convs["shallow"] > convs["one"]  # (the session fixture: the same tiny model, correction at one stage)

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    codec = Codec.load(tmp_path / "model2", provider="cpu")
    back = codec.decompress(codec.compress(rgb, mask="1_4"))
    assert back.shape == rgb.shape
