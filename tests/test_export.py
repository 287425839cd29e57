import json
from pathlib import Path

import numpy as np
import pytest

from hybridflow.export.cli import export_bundle


def test_manifest_lists_graphs_and_tables(tiny_model: Path) -> None:
    man = json.loads((tiny_model / "manifest.json").read_text())
    assert set(man["graphs"]) == {"vq_encoder", "vq_decoder", "cont_analysis", "hyper_analysis", "cont_synthesis",
                                  "cont_reconstruct", "predictor", "pixel_head", "pixel_tail"}
    assert man["random_init"] is True
    assert len(man["entropy"]["index_prior"]) == man["n_codes"]
    assert np.allclose(np.sum(man["entropy"]["z_pmf"], axis=1), 1, atol=1e-6)
    for g in man["graphs"].values():
        assert (tiny_model / g["file"]).stat().st_size == g["bytes"]
        assert g["opset"] == 17


def test_reexport_gives_same_model_id(tiny_bundle: Path, tiny_model: Path, tmp_path: Path) -> None:
    man = export_bundle(tiny_bundle, tmp_path / "again", parity=False)
    assert man["model_id"] == json.loads((tiny_model / "manifest.json").read_text())["model_id"]


def test_parity_with_real_tiles(tiny_bundle: Path, tmp_path: Path, photo: np.ndarray) -> None:
    man = export_bundle(tiny_bundle, tmp_path / "p", parity=True, real_images=[photo], timing=False)
    par = man["parity"]
    for name, entry in par["graphs"].items():
        for case in ("random", "real"):
            for metric in entry[case].values():
                if "agreement" in metric:
                    assert metric["agreement"] >= 0.995, name
                else:
                    assert metric["max_abs"] < 1e-3, name
    assert par["end_to_end"]["max_abs_pixel_diff"] <= 2


def test_bad_checkpoint_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "x.pt"
    torch.save({"hello": 1}, path)
    with pytest.raises(ValueError, match="not a HybridFlow bundle"):
        export_bundle(path, tmp_path / "o", parity=False)
    assert not (tmp_path / "o").exists()


def test_entropy_tables_do_not_depend_on_float_noise() -> None:
    """Another CPU computes the prior's CDF with different last bits; the stored table (and so the
    model id) must not change. Simulated by a relative 1e-13 of noise on the float table."""
    torch = pytest.importorskip("torch")
    from hybridflow.models.entropy_models import PMF_BITS, FactorizedPrior, fixed_point_pmf, scale_table

    torch.manual_seed(0)
    prior = FactorizedPrior(8)
    table = prior.pmf_table(32)
    counts = table * 2**PMF_BITS
    assert np.array_equal(counts, np.round(counts)) and (counts >= 1).all()
    assert (counts.sum(axis=1) == 2**PMF_BITS).all()
    rng = np.random.default_rng(0)
    noisy = table * (1 + rng.uniform(-1e-13, 1e-13, table.shape))
    assert not np.array_equal(noisy, table)
    assert np.array_equal(fixed_point_pmf(noisy), table)
    st = scale_table()
    assert np.array_equal(st * 2**20, np.round(st * 2**20)) and (np.diff(st) > 0).all()


def _equal_payloads(a: object, b: object) -> bool:
    """Tensor by tensor (dtype and bits), and the same Python types for everything else."""
    torch = pytest.importorskip("torch")
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal_payloads(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal_payloads(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_fp16_initialisers_change_no_output(tmp_path: Path) -> None:
    """fp16 storage + Cast must compute exactly what the fp32 graph computes, in half the bytes."""
    import onnxruntime as ort

    from hybridflow.export.convert import to_onnx
    from hybridflow.export.graphs import graph_specs
    from hybridflow.export.grids import components
    from hybridflow.models import checkpoint
    from hybridflow.models.bundle import save_bundle, tiny_components

    save_bundle(tmp_path / "b.pt", tiny_components(seed=3))  # through the bundle: fp16-exact weights
    specs = {s.name: s for s in graph_specs(components(checkpoint.load(tmp_path / "b.pt"), "b.pt"))}
    for name in ("vq_decoder", "cont_analysis", "predictor"):
        full = to_onnx(specs[name], tmp_path / f"{name}32.onnx", fp16_weights=False)
        half = to_onnx(specs[name], tmp_path / f"{name}16.onnx")
        # (tiny graphs: their structure weighs more than their weights; the shipped ones halve)
        assert half["fp16_initialisers"] > 0 and half["bytes"] < 0.8 * full["bytes"], name
        feeds = {k: v.numpy() for k, v in specs[name].inputs.items()}
        out32 = ort.InferenceSession(tmp_path / f"{name}32.onnx", providers=["CPUExecutionProvider"]).run(None, feeds)
        out16 = ort.InferenceSession(tmp_path / f"{name}16.onnx", providers=["CPUExecutionProvider"]).run(None, feeds)
        for a, b in zip(out32, out16):
            assert np.array_equal(a, b), name


def test_bundle_is_rebuilt_from_the_export_bit_for_bit(tiny_bundle: Path, tiny_model: Path, tmp_path: Path) -> None:
    from hybridflow.export.bundle_index import EXTRA_FILE, derive
    from hybridflow.export.grids import components
    from hybridflow.models import checkpoint

    derived = derive(tiny_model)
    exported = checkpoint.load(tiny_bundle)
    components(exported, tiny_bundle)  # what the export wrote: weights on the int8 and integer grids
    assert _equal_payloads(derived, exported)
    assert not _equal_payloads(derived, checkpoint.load(tiny_bundle))  # (which the random ones were not)
    # the hyper synthesis and context come from their integer .npz files, not a second copy in the extra file
    state = json.loads((tiny_model / "bundle_index.json").read_text())["payload"]["cont"]["state"]
    integer = {k for k, v in state.items() if "integer" in v["__tensor__"]}
    assert integer and integer == {k for k in state if k.startswith(("h_s.", "context."))}
    # the synthesis tail's transposed convolutions, exported as sub-pixel convolutions, come back through the
    # inverse rewrite, not as a second copy
    undone = {k for k, v in state.items() if "undo" in v["__tensor__"]}
    assert {"g_s_tail.0.weight", "g_s_tail.2.weight", "g_s_tail.0.bias"} <= undone
    checkpoint.save(tmp_path / "rebuilt.pt", **derived)
    man = export_bundle(tmp_path / "rebuilt.pt", tmp_path / "again", parity=False)
    assert man["model_id"] == json.loads((tiny_model / "manifest.json").read_text())["model_id"]
    for f in ("bundle_index.json", EXTRA_FILE, "predictor.onnx"):  # re-export: byte-identical files
        assert (tmp_path / "again" / f).read_bytes() == (tiny_model / f).read_bytes()


def test_version_1_index_still_rebuilds_its_bundle(tiny_model: Path, tmp_path: Path) -> None:
    """Model directories exported before index version 2 kept the integer networks' fp16 copy in the extra
    file: ``hf-train rebundle`` must still read them."""
    import shutil

    from hybridflow.export.bundle_index import EXTRA_FILE, INDEX_FILE, derive

    old = tmp_path / "v1"
    shutil.copytree(tiny_model, old)
    index = json.loads((old / INDEX_FILE).read_text())
    extra = bytearray((old / EXTRA_FILE).read_bytes())
    derived = derive(tiny_model)
    moved = 0
    for key, entry in index["payload"]["cont"]["state"].items():  # as version 1 wrote them: raw bytes
        e = entry["__tensor__"]
        if "integer" in e:
            raw = derived["cont"]["state"][key].numpy().tobytes()
            for k in ("integer", "net", "layer", "part"):
                del e[k]
            e.update(offset=len(extra), nbytes=len(raw))
            extra.extend(raw)
            moved += 1
    index["version"] = 1
    (old / INDEX_FILE).write_text(json.dumps(index))
    (old / EXTRA_FILE).write_bytes(bytes(extra))
    assert moved and _equal_payloads(derive(old), derived)


def test_edited_model_dir_does_not_rebuild_a_wrong_bundle(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from hybridflow.export.bundle_index import EXTRA_FILE, derive

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    data = bytearray((broken / EXTRA_FILE).read_bytes())
    data[0] ^= 1
    (broken / EXTRA_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="hash"):
        derive(broken)
