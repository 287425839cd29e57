"""HybridFlow runtime: compress / decompress with exported ONNX graphs. Imports no torch/onnx.

    from hybridflow.runtime import Codec
    codec = Codec.load()            # the embedded default model
    data = codec.compress(rgb)      # rgb: (H, W, 3) uint8
    rgb2 = codec.decompress(data)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Codec"]


def __getattr__(name: str) -> Any:  # lazy: `import hybridflow.runtime.metrics` stays light
    if name == "Codec":
        from .codec import Codec

        return Codec
    raise AttributeError(name)
