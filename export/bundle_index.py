"""The training bundle stored once: rebuilt from an exported model instead of kept as a second copy.

Nearly every fp16 weight of a bundle is also an initialiser of some exported graph (stored there in
fp16, see ``convert.fp16_initialisers``), sometimes transposed. At export time ``write`` records, for
every tensor of the bundle, which initialiser holds the same values and the SHA-256 of its fp16 bytes;
the predictor's linear weights are int8 tensors times scales there (int8_weights.py); the hyper
synthesis and the channel context are the integer networks' ``.npz`` arrays over their grids' scales
(grids.py put the bundle's weights on those grids; index version 2); the few tensors that no graph
holds as such (GDN parameters that onnxsim folds into products, the entropy prior, the raw codebook)
go into a small raw file beside it. ``derive`` rebuilds the exact bundle payload from a model directory and checks every
hash, so a model directory is all a release needs: ``hf-train rebundle DIR --out bundle.pt``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..runtime.fixedpoint import IntegerConvs
from .int8_weights import dequantise, stored_int8
from .manifest import integer_networks

INDEX_FILE = "bundle_index.json"
EXTRA_FILE = "bundle_extra.bin"
# 2: tensors of the integer networks (version 1 kept them in the extra file); 3: weights found through an
# export rewrite's inverse (``UNDO``; version 2 kept them in the extra file). All still read
INDEX_VERSION = 3
READS = (1, 2, 3)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _fp16_values(t: onnx.TensorProto) -> np.ndarray | None:
    """The initialiser's values as fp16 if they are exactly fp16, else None."""
    if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return None
    value = numpy_helper.to_array(t)
    with np.errstate(over="ignore"):  # out-of-range values become inf and fail the exactness check
        half = value.astype(np.float16)
    return half if np.array_equal(half.astype(value.dtype), value) else None


Where = dict[str, Any]  # graph, initializer, transpose; and "scale" for an int8 weight (int8_weights.py);
#                        or integer (a manifest key), net, layer, part for an integer network's tensor


def _grid_values(net: IntegerConvs, layer: int, part: str) -> np.ndarray:
    """An integer network's weight or bias as the fp16 values its integers stand for."""
    return net.values(layer, part).astype(np.float16)


# Weights that export rewrote (export/graphs.py: the continuous picture's transposed convolutions as sub-pixel
# convolutions, its last convolution before the shuffle, the fusion's strided first one after an unshuffle;
# models/layers.py) are found again through the inverse rewrite, with the parameters of the layers this code
# base has: stride 2, 5 taps, padding 2 (hyperprior.deconv, the up-sampling's features), a 3×3 convolution
# after a ×2 shuffle, a 4×4 stride-2 convolution with padding 1 (fusion.down). The biases of the first two
# are the originals repeated once per phase: every 4th value.
UNDO: dict[str, tuple[int, ...]] = {"subpixel_deconv": (2, 5, 2), "shuffled_conv": (2, 3), "unshuffled_conv": (2, 4, 1),
                                    "phases": (4,)}


def _undo(a: np.ndarray, how: list[Any]) -> np.ndarray:
    """The weight that an export rewrite (``UNDO``) turned into the initialiser ``a``."""
    from ..models.layers import ShuffledConv, SubpixelDeconv, UnshuffledConv

    kind, *args = how
    if kind == "phases":
        return a[:: args[0]]
    t = torch.from_numpy(np.array(a))  # (a copy: initialisers are read-only)
    if kind == "subpixel_deconv":
        return SubpixelDeconv.deconv_weight(t, *args).numpy()
    if kind == "shuffled_conv":
        return ShuffledConv.conv_weight(t, *args).numpy()
    if kind == "unshuffled_conv":
        return UnshuffledConv.conv_weight(t, *args).numpy()
    raise ValueError(f"unknown rewrite {kind!r} in a bundle index")


def _undone(half: np.ndarray) -> list[tuple[list[Any], np.ndarray]]:
    """Every ``UNDO`` rewrite whose output ``half`` could be, each with the weight it would come from."""
    found = []
    if half.ndim == 1 and half.shape[0] % UNDO["phases"][0] == 0:
        found.append(["phases", *UNDO["phases"]])
    if half.ndim == 4 and half.shape[-1] == half.shape[-2] == 3 and half.shape[0] % 4 == 0:
        found.append(["subpixel_deconv", *UNDO["subpixel_deconv"]])
    if half.ndim == 4 and half.shape[-1] == half.shape[-2] == 3 and half.shape[1] % 4 == 0:
        found.append(["unshuffled_conv", *UNDO["unshuffled_conv"]])
        if half.shape[0] % 4 == 0:
            found.append(["shuffled_conv", *UNDO["shuffled_conv"]])
    return [(how, _undo(half, how)) for how in found]


def _initialiser_pool(model_dir: Path, graph_files: dict[str, str]) -> dict[str, Where]:
    """SHA-256 of fp16 bytes → where those values are; the first occurrence in graph-name order.
    An int8 weight's values are its int8 tensor times its scales (``int8_weights.dequantise``); a rewritten
    weight's, the inverse rewrite of its initialiser (``UNDO``), after every direct occurrence."""
    pool: dict[str, Where] = {}
    undone: dict[str, Where] = {}
    for graph in sorted(graph_files):
        model = onnx.load(model_dir / graph_files[graph])
        values = [(t.name, _fp16_values(t), None) for t in model.graph.initializer]
        values += [(inputs[0], dequantise(q, scale).astype(np.float16), inputs[1])
                   for q, scale, inputs in stored_int8(model).values()]
        for name, half, scale in values:
            if half is None:
                continue
            for transpose in (False, True) if half.ndim == 2 else (False,):
                where = {"graph": graph, "initializer": name, "transpose": transpose}
                pool.setdefault(_sha(half.T if transpose else half), where | ({"scale": scale} if scale else {}))
            if scale is None:
                for how, value in _undone(half):
                    undone.setdefault(_sha(value), {"graph": graph, "initializer": name, "transpose": False,
                                                    "undo": how})
    for sha, where in undone.items():
        pool.setdefault(sha, where)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for key, nets in integer_networks(manifest, model_dir).items():
        for n, net in enumerate(nets):
            for layer in range(len(net.weights)):
                for part in ("weight", "bias"):
                    where = {"integer": key, "net": n, "layer": layer, "part": part}
                    pool.setdefault(_sha(_grid_values(net, layer, part)), where)
    return pool


def write(payload: dict[str, Any], model_dir: Path, graph_files: dict[str, str]) -> dict[str, int]:
    """Write the index and the extra tensors of ``payload`` (a loaded bundle) into ``model_dir``.
    Deterministic bytes, so re-exporting leaves both files unchanged. Returns byte counts."""
    pool = _initialiser_pool(model_dir, graph_files)
    extra = bytearray()

    def encode(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            a = v.detach().cpu().contiguous().numpy()
            entry: dict[str, Any] = {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _sha(a)}
            if a.dtype == np.float16 and entry["sha256"] in pool:
                entry.update(pool[entry["sha256"]])
            else:
                entry.update(offset=len(extra), nbytes=a.nbytes)
                extra.extend(a.tobytes())
            return {"__tensor__": entry}
        if isinstance(v, tuple):
            return {"__tuple__": [encode(x) for x in v]}
        if isinstance(v, list):
            return [encode(x) for x in v]
        if isinstance(v, dict):
            return {k: encode(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot index a bundle value of type {type(v).__name__}")

    index = {"version": INDEX_VERSION, "extra_file": EXTRA_FILE, "payload": encode(payload)}
    (model_dir / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    (model_dir / EXTRA_FILE).write_bytes(bytes(extra))
    return {"index_bytes": (model_dir / INDEX_FILE).stat().st_size, "extra_bytes": len(extra)}


def derive(model_dir: Path) -> dict[str, Any]:
    """The bundle payload that ``model_dir`` was exported from, bit for bit (every tensor's hash checked)."""
    model_dir = Path(model_dir)
    path = model_dir / INDEX_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir}: no {INDEX_FILE} (export the model again with this version of hf-export)")
    index = json.loads(path.read_text())
    if index.get("version") not in READS:
        raise ValueError(f"{path}: index version {index.get('version')} is not supported")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    graph_files = {name: g["file"] for name, g in manifest["graphs"].items()}
    extra = (model_dir / index["extra_file"]).read_bytes()
    graphs: dict[str, dict[str, onnx.TensorProto]] = {}
    integer: dict[str, list[IntegerConvs]] = {}

    def tensor(e: dict[str, Any]) -> torch.Tensor:
        if "integer" in e:
            if not integer:
                integer.update(integer_networks(manifest, model_dir))
            a = _grid_values(integer[e["integer"]][e["net"]], e["layer"], e["part"]).astype(e["dtype"])
        elif "graph" in e:
            if e["graph"] not in graphs:
                loaded = onnx.load(model_dir / graph_files[e["graph"]])
                graphs[e["graph"]] = {t.name: t for t in loaded.graph.initializer}
            inits = graphs[e["graph"]]
            a = numpy_helper.to_array(inits[e["initializer"]])
            if "scale" in e:
                a = dequantise(a, numpy_helper.to_array(inits[e["scale"]]))
            if "undo" in e:
                a = _undo(a, e["undo"])
            a = a.astype(e["dtype"])
            a = a.T if e["transpose"] else a
        else:
            a = np.frombuffer(extra[e["offset"] : e["offset"] + e["nbytes"]], dtype=e["dtype"])
        a = np.ascontiguousarray(a).reshape(e["shape"])
        if _sha(a) != e["sha256"]:
            raise ValueError(f"{model_dir}: a bundle tensor does not match its recorded hash (files edited?)")
        return torch.from_numpy(a.copy())

    def decode(v: Any) -> Any:
        if isinstance(v, dict):
            if "__tensor__" in v:
                return tensor(v["__tensor__"])
            if "__tuple__" in v:
                return tuple(decode(x) for x in v["__tuple__"])
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    return decode(index["payload"])
