"""The bundle's weights put on the grids the runtime computes with, before anything is exported.

Two kinds of weights are not used as the bundle stores them (fp16): the predictor's linear layers run
in int8 (int8_weights.py), and the hyper synthesis and the channel context run in exact integers
(runtime/fixedpoint.py: weights × 2**W_BITS, biases × 2**(ACT_BITS + W_BITS)). Rounding the bundle's
own weights onto those grids first means

1. the bundle holds exactly what the runtime computes with (training on a rebuilt bundle starts from
   the shipped entropy model, not from a neighbour of it);
2. the exported files hold every one of those values, so ``hf-train rebundle`` rebuilds them from the
   graphs and the integer ``.npz`` files (bundle_index.py) instead of a second fp16 copy in
   ``bundle_extra.bin`` (0.89 MB of the 32 MiB tree for the s24 model);
3. rounding again changes nothing, so a rebuilt bundle exports to the same bytes.

A rounded value is exact in fp16: below 0.5 (|integer| < 2**11 at 2**-12) fp16 has the grid's
resolution or finer, and where fp16 is coarser its rounding of a grid value is itself a grid value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..runtime.fixedpoint import ACT_BITS, W_BITS, IntegerConvs
from .int8_weights import linear_keys, round_predictor


def integer_layer_groups(cont: torch.nn.Module) -> list[list[torch.nn.Conv2d]]:
    """The continuous codec's convolutions that the runtime runs in integers, one list per integer
    network: the hyper synthesis, then each context slice after the first (``manifest.build`` exports
    them in this order)."""
    groups = [list(cont.h_s.layers())]
    if cont.context is not None:
        groups += [cont.context.convolutions(s) for s in range(1, cont.context.slices)]
    return groups


def _on_grid(t: torch.Tensor, bits: int) -> torch.Tensor:
    scale = 2.0**bits
    rounded = (torch.round(t.double() * scale) / scale + 0.0).to(t.dtype)  # + 0.0: no −0.0 (the integers have none)
    if not torch.equal(torch.round(rounded.double() * scale), rounded.double() * scale):
        raise ValueError(f"a {t.dtype} weight cannot hold the 2**-{bits} grid (value beyond its range?)")
    return rounded


def round_integer_networks(state: dict[str, torch.Tensor], cont: torch.nn.Module) -> int:
    """Round the hyper synthesis and context weights (and biases) of a continuous codec's state dict
    (``cont``: the codec it loads into) onto the integer networks' grids, in place. Returns how many
    tensors changed (0 for a bundle already rounded)."""
    names = {id(m): n for n, m in cont.named_modules()}
    changed = 0
    for layer in (layer for group in integer_layer_groups(cont) for layer in group):
        for part, bits in IntegerConvs.grid_bits(ACT_BITS, W_BITS).items():
            key = f"{names[id(layer)]}.{part}"
            rounded = _on_grid(state[key], bits)
            changed += int(not torch.equal(rounded, state[key]))
            state[key] = rounded
    return changed


def components(payload: dict[str, Any], path: Path | str) -> Any:  # noqa: ANN401  (models.bundle.Components)
    """The bundle ``payload``'s networks as the export writes them: every grid above applied, in
    ``payload`` too (the model, its parity checks and the bundle ``hf-train rebundle`` rebuilds all hold
    the rounded weights)."""
    from ..models.bundle import components_from_payload

    c = components_from_payload(payload, path)
    changed = round_integer_networks(payload["cont"]["state"], c.cont)
    if c.predictor is not None:
        changed += round_predictor(payload["predictor"]["state"], linear_keys(c.predictor))
    return components_from_payload(payload, path) if changed else c
