"""hf-run as a user runs it: exit codes, one-line errors, never touching inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from hybridflow.runtime.bitstream import FORMAT_VERSION

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


def test_provider_cuda_without_a_gpu_is_one_line(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    """--provider cuda cannot be tested for real here (no GPU); without one it must fail in one clean line."""
    from hybridflow.runtime.session import cuda_works

    if cuda_works(str(tiny_model / "vq_encoder.onnx")):
        pytest.skip("this machine has a working CUDA stack")
    p = run("compress", png, tmp_path / "x.hfc", "--model", tiny_model, "--provider", "cuda")
    assert_clean_error(p, "--provider cuda: onnxruntime cannot use a GPU on this machine")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "x.hfc").exists()


def test_literal_names_with_pattern_characters(tiny_model: Path, photo: np.ndarray, tmp_path: Path) -> None:
    """Issue 21.6: with img[1].png and img1.png present, 'img[1].png' compressed img1.png into a new
    folder. A name that exists is used literally; an unmatched pattern creates nothing."""
    cv2.imwrite(str(tmp_path / "img[1].png"), photo[:100, :120])
    cv2.imwrite(str(tmp_path / "img1.png"), photo[:50, :60])
    out = tmp_path / "out.hfc"
    p = run("compress", tmp_path / "img[1].png", out, "--model", tiny_model, "--mask", "1_4")
    assert p.returncode == 0, p.stderr
    assert out.is_file() and "120×100" not in p.stdout
    dec = tmp_path / "dec.png"
    assert run("decompress", out, dec, "--model", tiny_model).returncode == 0
    assert cv2.imread(str(dec)).shape == (100, 120, 3)
    missing = tmp_path / "never"
    assert_clean_error(run("compress", tmp_path / "nothing*.png", missing, "--model", tiny_model), "no matching files")
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    assert_clean_error(run("compress", tmp_path / "empty", missing, "--model", tiny_model), "no images")
    assert not missing.exists()


def test_colliding_output_names_are_refused(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    """Issue 21.9: a.jpg and a.png both map to a.hfc; the second silently replaced the first."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(png, src / "a.png")
    shutil.copy(png, src / "b.png")
    cv2.imwrite(str(src / "a.jpg"), cv2.imread(str(png)))
    out = tmp_path / "out"
    for extra in ([], ["--force"]):
        p = run("compress", src, out, "--model", tiny_model, "--mask", "1_9", *extra)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert "1 done, 2 failed" in p.stderr, p.stderr
        assert "a.jpg: output" in p.stderr and "would also be written from" in p.stderr
        assert sorted(f.name for f in out.iterdir()) == ["b.hfc"]


def test_option_checks(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    """Issue 21.7: --threads 5000 hung, an unknown provider was accepted by load()."""
    from hybridflow.runtime import Codec

    dst = tmp_path / "o.hfc"
    assert_clean_error(run("compress", png, dst, "--model", tiny_model, "--threads", 5000), "--threads must be")
    assert_clean_error(run("compress", png, dst, "--model", tiny_model, "--threads", -1), "--threads must be")
    assert_clean_error(run("compress", png, dst, "--model", tiny_model, "--provider", "foo"), "unknown --provider")
    assert not dst.exists()
    for kwargs in ({"provider": "foo"}, {"threads": 5000}, {"threads": -2}, {"tile_batch": 0},
                   {"tile_batch": -1}, {"tile_batch": 1.5}):
        with pytest.raises(ValueError):
            Codec.load(tiny_model, **kwargs)


def _broken_model(tiny_model: Path, tmp_path: Path, how: str) -> Path:
    import json

    bad = tmp_path / f"model-{how}"
    shutil.copytree(tiny_model, bad)
    man = json.loads((bad / "manifest.json").read_text())
    if how == "key":
        del man["entropy"]["index_prior"]
    elif how == "type":
        man["graphs"] = ["not", "a", "dict"]
    elif how == "onnx":
        (bad / man["graphs"]["vq_encoder"]["file"]).write_bytes(b"\x08\x07garbage")
    elif how == "npz":
        (bad / man["hyper_synthesis"]).write_bytes(b"PK\x03\x04 not a zip")
    elif how == "no-codebook":
        del man["codebook"]
    elif how == "codebook":
        np.save(bad / man["codebook"], np.zeros((3, 2), np.float32))  # readable, but the wrong shape
    (bad / "manifest.json").write_text(json.dumps(man))
    return bad


@pytest.mark.parametrize(("how", "names"), [("key", "manifest.json"), ("type", "manifest.json"),
                                             ("onnx", "vq_encoder.onnx"), ("npz", ".npz"),
                                             ("codebook", "codebook.npy"), ("no-codebook", "manifest.json")])
def test_a_broken_model_is_one_line_naming_the_file(tiny_model: Path, png: Path, tmp_path: Path, how: str,
                                                     names: str) -> None:
    """Issue 21.4: KeyError/AttributeError/BadZipFile and onnxruntime's exceptions ended in tracebacks."""
    bad = _broken_model(tiny_model, tmp_path, how)
    p = run("compress", png, tmp_path / "o.hfc", "--model", bad, "--mask", "1_4")
    assert_clean_error(p, names)
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr


def test_batch_goes_on_after_any_failure(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    """A decompression bomb (cv2.error before) and an unreadable file among good ones: each failure
    is one line naming its file, the others are written, the run summarises and exits 1."""
    from .test_imageio import _png_header

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(png, src / "a.png")
    (src / "b.png").write_bytes(_png_header(65536, 65536))
    shutil.copy(png, src / "c.png")
    (src / "d.png").write_bytes(_png_header(300, 200)[:40])
    out = tmp_path / "out"
    p = run("compress", src, out, "--model", tiny_model, "--mask", "1_9")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "b.png" in errors[0] and "refused before decoding" in errors[0] and "d.png" in errors[1]
    assert "2 done, 2 failed" in p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["a.hfc", "c.hfc"]


def test_info_errors_name_the_file(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.hfc"
    bad.write_bytes(b"HF" + bytes([FORMAT_VERSION]) + bytes(20))
    assert_clean_error(run("info", bad, "--model", tiny_model), f"{bad}: checksum mismatch")
    p = run("info", tmp_path / "gone.hfc", "--model", tiny_model)
    assert_clean_error(p, "gone.hfc")
    assert p.stderr.count("gone.hfc") == 1  # named once, not "gone.hfc: gone.hfc: No such file"


def test_version_and_help_text(tiny_model: Path) -> None:
    """Issue 18.4: --version; help for every option, no type noise (<bool>, {IN})."""
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("hf-run ") and "stream format" in p.stdout
    for cmd in ("compress", "decompress", "info", "eval"):
        text = run(cmd, "--help").stdout
        assert "<" not in text and "{" not in text, text
        options = [ln.split() for ln in text.splitlines() if ln.strip().startswith("-")]
        assert options and all(len(opt) >= 2 and not opt[-1].isupper() for opt in options), text


def test_single_image_eval_prints_its_summary(tiny_model: Path, png: Path) -> None:
    p = run("eval", png, "--model", tiny_model, "--mask", "1_4")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("photo.png") and lines[-1].startswith("mean of 1") and "dB" in lines[-1]


@pytest.mark.parametrize("script", ["train", "export"])
def test_training_tools_without_torch_say_so_in_one_line(script: str) -> None:
    code = f"import sys; sys.modules['torch'] = None; from hybridflow.runtime.entrypoints import {script}; {script}()"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: hf-{script} needs the train extra (torch not installed): pip install 'hybridflow[train]'"]


def run_on_terminal(*args: object) -> tuple[int, str, str]:
    """hf-run as in an interactive shell: stderr on a pseudo-terminal, stdout piped."""
    import os
    import pty
    import threading

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    p = subprocess.Popen([*HF_RUN, *map(str, args)], stdout=subprocess.PIPE, stderr=slave, text=True, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:  # drain the terminal so the child never blocks on a full pty buffer
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=pump)
    reader.start()
    out, _ = p.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return p.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal_and_for_large_images(tiny_model: Path, png: Path, photo: np.ndarray,
                                                             tmp_path: Path) -> None:
    """A large image shows the Codec's progress on stderr when stderr is a terminal; piped output and
    small images get none, and the result line stays on stdout either way."""
    from hybridflow.runtime.cli import LARGE_IMAGE_PIXELS

    big = tmp_path / "big.png"
    side = int(LARGE_IMAGE_PIXELS**0.5) + 8
    cv2.imwrite(str(big), cv2.resize(photo, (side, side)))
    model = ("--model", tiny_model, "--mask", "1_4")
    p = run("compress", big, tmp_path / "piped.hfc", *model)
    assert p.returncode == 0 and p.stderr == "" and "bpp" in p.stdout
    p = run("decompress", tmp_path / "piped.hfc", tmp_path / "piped.png", "--model", tiny_model)
    assert p.returncode == 0 and p.stderr == "" and f"{side}×{side}" in p.stdout

    rc, out, err = run_on_terminal("compress", big, tmp_path / "tty.hfc", *model)
    assert rc == 0 and "bpp" in out and "compressing big.png" in err and "━" in err, err
    assert "compressing" not in out
    rc, out, err = run_on_terminal("decompress", tmp_path / "tty.hfc", tmp_path / "tty.png", "--model", tiny_model)
    assert rc == 0 and f"{side}×{side}" in out and "decompressing tty.hfc" in err and "━" in err, err
    rc, out, err = run_on_terminal("compress", png, tmp_path / "small.hfc", *model)
    assert rc == 0 and "bpp" in out and "compressing" not in err and "━" not in err, err

def test_size_options(tiny_model: Path, png: Path, tmp_path: Path) -> None:
    """Issue 18.2: --max-bytes below the smallest stream is one line naming the file and that size;
    contradictory options are refused before anything is read; caps hold for compress and eval."""
    out = tmp_path / "o.hfc"
    p = run("compress", png, out, "--model", tiny_model, "--max-bytes", 10)
    assert_clean_error(p, f"{png}: cannot fit in 10 bytes")
    assert "smallest stream for this image is" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()
    smallest = int(p.stderr.split("smallest stream for this image is ")[1].split()[0])
    p = run("compress", png, out, "--model", tiny_model, "--quality", 2, "--target-bpp", 0.1)
    assert_clean_error(p, "--quality and --target-bpp each choose the size: give one")
    assert_clean_error(run("compress", png, out, "--model", tiny_model, "--quality", "high"), "--quality")
    p = run("compress", png, out, "--model", tiny_model, "--max-bytes", smallest + 100)
    assert p.returncode == 0 and smallest <= out.stat().st_size <= smallest + 100, p.stderr
    bpp = round(8 * (smallest + 100) / (png_pixels := cv2.imread(str(png)).size // 3), 4)
    p = run("eval", png, "--model", tiny_model, "--target-bpp", bpp)
    assert p.returncode == 0, p.stderr
    assert 8 * smallest / png_pixels <= float(p.stdout.splitlines()[-1].split()[3]) <= bpp, p.stdout
