"""The base package (runtime only) installs into a fresh venv without torch and runs hf-run there."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("HF_SKIP_INSTALL_TEST") == "1", reason="HF_SKIP_INSTALL_TEST=1")
def test_runtime_only_install(tmp_path: Path, tiny_model: Path) -> None:
    import cv2

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", str(REPO)], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('torch', 'onnx', 'onnxsim') "
                        "if u.find_spec(m)])"], capture_output=True, text=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
    img = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), img)
    hf_run = str(env_dir / "bin" / "hf-run")
    for args in (["compress", tmp_path / "in.png", tmp_path / "a.hfc", "--model", tiny_model],
                 ["decompress", tmp_path / "a.hfc", tmp_path / "out.png", "--model", tiny_model]):
        p = subprocess.run([hf_run, *map(str, args)], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert p.returncode == 0, p.stderr
    assert cv2.imread(str(tmp_path / "out.png")).shape == (200, 300, 3)
    if (REPO / "runtime" / "assets" / "default" / "manifest.json").exists():
        p = subprocess.run([hf_run, "compress", str(tmp_path / "in.png"), str(tmp_path / "d.hfc")],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr  # the embedded default model was installed with the package
