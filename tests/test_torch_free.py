"""The runtime must work on a machine without torch/onnx/onnxsim: prove none of them gets imported."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, numpy as np
from hybridflow.runtime import Codec
codec = Codec.load(sys.argv[1], provider="auto")
img = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
for stream in ("hybrid", "vq", "continuous"):
    out = codec.decompress(codec.compress(img, mask="1_4" if stream != "vq" else "none", stream=stream))
    assert out.shape == img.shape
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxsim"))
print("BAD", bad)
"""


def test_runtime_imports_no_torch_or_onnx(tiny_model: Path) -> None:
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "BAD []" in p.stdout
    assert "libcublas" not in p.stderr and "cuDNN" not in p.stderr  # the CUDA probe stays quiet
