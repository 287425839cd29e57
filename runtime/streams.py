"""The three stream kinds and what each carries: the one place that knows, everyone else asks.

A ``hybrid`` stream is the codec; ``vq`` and ``continuous`` are its single-stream baselines (the
paper's ablations). Their order is the header's stream code (FORMAT.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamKind:
    name: str
    tokens: bool  # carries VQ indices, with a mask schedule per tile
    continuous: bool  # carries the continuous latent (ẑ, ŷ) and so the decoder's guidance
    # Decode work grows with the tile count, so every tile must be paid for with payload bytes (format 2;
    # continuous 16 → 39 in format 3, when s9's learned up-sampler made its tiles cost ~0.11 CPU-s each):
    # a stream of ≤ 1 KB then holds at most 7 hybrid, 15 vq or 25 continuous tiles (FORMAT.md says why
    # these numbers). Encoders pad short payloads with terminator symbols (entropy.py).
    min_payload_per_tile: int
    help: str


KINDS: tuple[StreamKind, ...] = (
    StreamKind("hybrid", True, True, 128, "VQ indices + continuous stream: the codec"),
    StreamKind("vq", True, False, 64, "VQ indices only (baseline: the predictor runs unguided)"),
    StreamKind("continuous", False, True, 39, "continuous stream only (baseline: a ×4 upsampled blur)"),
)
STREAMS: tuple[str, ...] = tuple(k.name for k in KINDS)


def stream_kind(name: str) -> StreamKind:
    for k in KINDS:
        if k.name == name:
            return k
    raise ValueError(f"unknown stream {name!r}; choose one of {', '.join(STREAMS)}")
