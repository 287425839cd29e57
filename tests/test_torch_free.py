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


def test_hf_run_makes_numpy_blas_single_threaded() -> None:
    """``hf-run`` sets the BLAS thread variables before numpy is imported (a user's value wins)."""
    import os

    code = ("import sys; from hybridflow.runtime import entrypoints as e; import os; before = 'numpy' in sys.modules; "
            "e.single_threaded_blas(); import numpy; print(before, [os.environ[v] for v in e.BLAS_THREADS])")
    blas = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in blas}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert p.stdout.split() == ["False", "['1',", "'1',", "'1']"], p.stderr
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env | {"OMP_NUM_THREADS": "3"})
    assert p.stdout.split() == ["False", "['1',", "'3',", "'1']"], p.stderr
