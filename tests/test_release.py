"""``hf-train bundle`` / ``unbundle``: a release can be rebuilt from its own stage checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_a_bundle_made_again_from_its_unbundled_parts_exports_the_same_model(
        synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training leaves fp32 checkpoints; the bundle holds fp16 and the export puts the integer networks on
    their grids. The statistics ``make_bundle`` measures (index prior, ``auto`` threshold) must be those of
    the shipped weights, or the parts that ``hf-train unbundle`` gives back measure slightly different
    numbers and the same networks get another model id."""
    from hybridflow.export.cli import export_bundle
    from hybridflow.models import checkpoint
    from hybridflow.models.bundle import tiny_components
    from hybridflow.models.train.release import make_bundle, split_bundle

    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    c = tiny_components(with_stage23=False)
    for name, model in (("vq", c.vq), ("cont", c.cont)):
        checkpoint.save(tmp_path / f"{name}.pt", model=model.state_dict(), config=model.cfg, kind=name)

    def release(vq: Path, cont: Path, tag: str) -> dict:
        make_bundle(tmp_path / f"{tag}.pt", vq, cont, None, None, "same-name", tmp_path / "cache", n_tiles=8)
        return export_bundle(tmp_path / f"{tag}.pt", tmp_path / tag, parity=False)

    first = release(tmp_path / "vq.pt", tmp_path / "cont.pt", "first")
    parts = split_bundle(tmp_path / "first", tmp_path / "parts")
    again = release(tmp_path / "parts" / "vq.pt", tmp_path / "parts" / "cont.pt", "again")
    assert {p.name for p in parts} == {"vq.pt", "cont.pt"}
    assert again["complexity"] == first["complexity"]
    assert again["model_id"] == first["model_id"]
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["model_id"] == first["model_id"]
