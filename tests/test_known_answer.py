"""Known answer for the shipped model: a committed stream must decode to the recorded image and its
decode must re-encode to the recorded bytes. Fails when the format, the entropy tables or the graphs
change — on purpose or not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.known_answer import FOLDER, MASK, REGENERATE, cpu, read_decoded, sha256
from hybridflow.runtime import Codec
from hybridflow.runtime.model import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").exists(), reason="no shipped model")
HOW = (f"If the shipped model (runtime/assets/default) or the stream format changed on purpose, regenerate "
       f"the vector with `{REGENERATE}` and commit tests/data/known_answer; otherwise this is a regression.")


def test_known_answer_of_the_shipped_model() -> None:
    expected = json.loads((FOLDER / "expected.json").read_text())
    codec = Codec.load(provider="cpu")
    shipped = codec.model.manifest["model_id"]
    assert shipped == expected["model_id"], f"the shipped model is not {expected['model']}. {HOW}"
    stream = (FOLDER / "stream.hfc").read_bytes()
    assert len(stream) == expected["stream_bytes"] < 1024
    out = codec.decompress(stream)
    reference = read_decoded()
    if cpu() == expected["recorded_on"]:
        assert sha256(out) == expected["decode_sha256"], f"decode differs from the recorded one. {HOW}"
    else:  # another CPU's float kernels may move a few pixels by a level; anything more is a change
        diff = np.abs(out.astype(int) - reference.astype(int))
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, f"decode differs from the recorded one. {HOW}"
    assert codec.compress(reference, mask=MASK).hex() == expected["reencode_hex"], f"re-encode differs. {HOW}"
    # every rate point: its re-encode, and that it decodes (the gains on both sides of the entropy path)
    assert (codec.model.rate_points, codec.model.base_rate) == (expected["rate_points"], expected["base_rate"])
    for rate, recorded in enumerate(expected["reencode_hex_per_rate"]):
        data = codec.compress(reference, mask=MASK, rate=rate)
        assert data.hex() == recorded, f"re-encode at rate point {rate} differs. {HOW}"
        assert codec.decompress(data).shape == reference.shape
