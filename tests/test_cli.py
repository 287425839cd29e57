"""hf-run as a user runs it: exit codes, one-line errors, never touching inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

HF_RUN = [sys.executable, "-m", "hybridflow.runtime.cli"]


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*HF_RUN, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_clean_error(p: subprocess.CompletedProcess, text: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert lines and text in lines[0], p.stderr


@pytest.fixture
def png(tmp_path: Path, photo: np.ndarray) -> Path:
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return path


def test_compress_info_decompress(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    before = png.read_bytes()
    hfc = tmp_path / "photo.hfc"
    p = run("compress", png, hfc, "--model", tiny_model, "--mask", "1_4")
    assert p.returncode == 0, p.stderr
    assert "bpp" in p.stdout and hfc.stat().st_size > 16
    p = run("info", hfc, "--model", tiny_model)
    assert p.returncode == 0 and "1_4: 4" in p.stdout and "matches" in p.stdout
    out = tmp_path / "back.png"
    p = run("decompress", hfc, out, "--model", tiny_model)
    assert p.returncode == 0, p.stderr
    assert cv2.imread(str(out)).shape == (300, 420, 3)
    assert png.read_bytes() == before
    assert not list(tmp_path.glob("*.part"))


def test_existing_output_needs_force_and_input_is_never_overwritten(tiny_model: Path, png: Path,
                                                                    tmp_path: Path) -> None:
    hfc = tmp_path / "x.hfc"
    hfc.write_bytes(b"keep me")
    assert_clean_error(run("compress", png, hfc, "--model", tiny_model), "exists (use --force")
    assert hfc.read_bytes() == b"keep me"
    assert run("compress", png, hfc, "--model", tiny_model, "--force").returncode == 0
    assert hfc.read_bytes() != b"keep me"
    before = png.read_bytes()
    assert_clean_error(run("compress", png, png, "--model", tiny_model, "--force"), "refusing to overwrite the input")
    assert png.read_bytes() == before
    assert_clean_error(run("decompress", hfc, hfc, "--model", tiny_model, "--force"), "refusing to overwrite")
    assert hfc.stat().st_size > 16


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0garbage", b"HF\x01", b"not an hfc at all"])
def test_bad_streams_fail_cleanly(tiny_model: Path, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.hfc"
    bad.write_bytes(content)
    out = tmp_path / "out.png"
    assert_clean_error(run("decompress", bad, out, "--model", tiny_model), "")
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_truncated_stream_fails_cleanly(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    hfc = tmp_path / "p.hfc"
    assert run("compress", png, hfc, "--model", tiny_model).returncode == 0
    cut = tmp_path / "cut.hfc"
    cut.write_bytes(hfc.read_bytes()[:-7])
    assert_clean_error(run("decompress", cut, tmp_path / "o.png", "--model", tiny_model), "checksum")


def test_bad_images_and_options(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_clean_error(run("compress", empty, tmp_path / "e.hfc", "--model", tiny_model), "is empty")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    assert_clean_error(run("compress", text, tmp_path / "t.hfc", "--model", tiny_model), "not an image")
    assert_clean_error(run("compress", tmp_path / "missing.png", tmp_path / "m.hfc", "--model", tiny_model),
                       "no such file")
    assert_clean_error(run("compress", text, tmp_path / "t.hfc", "--mask", "1_5", "--model", tiny_model),
                       "unknown --mask")
    assert_clean_error(run("compress", text, tmp_path / "t.hfc", "--model", tmp_path), "no model at")


def test_directory_with_one_bad_file(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(png, src / "a.png")
    shutil.copy(png, src / "c.png")
    (src / "b.png").write_bytes(b"broken")
    out = tmp_path / "out"
    p = run("compress", src, out, "--model", tiny_model, "--mask", "1_9")
    assert p.returncode == 1
    assert "2 done, 1 failed" in p.stderr + p.stdout and "b.png" in p.stderr and "Traceback" not in p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["a.hfc", "c.hfc"]
    p = run("decompress", f"{out}/*.hfc", tmp_path / "dec", "--model", tiny_model)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (tmp_path / "dec").iterdir()) == ["a.png", "c.png"]


def test_eval_writes_csv(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    p = run("eval", png, "--model", tiny_model, "--mask", "1_4", "--csv", csv_path)
    assert p.returncode == 0, p.stderr
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("image,width,height,bytes,bpp,psnr,ms_ssim") and len(rows) == 2
