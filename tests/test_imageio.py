"""Odd inputs users will throw at `hf-run compress`."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from hybridflow.runtime.imageio import ImageReadError, read_image, write_image

Image = pytest.importorskip("PIL.Image")


def test_sixteen_bit_png(tmp_path: Path) -> None:
    img16 = (np.arange(40 * 30 * 3).reshape(30, 40, 3) * 50).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), img16)
    rgb, warns = read_image(tmp_path / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)
    assert "16-bit" in warns[0]
    expected = ((img16[..., ::-1].astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)


def test_greyscale_and_rgba(tmp_path: Path) -> None:
    grey = np.tile(np.arange(50, dtype=np.uint8), (20, 1))
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    rgb, warns = read_image(tmp_path / "g.png")
    assert rgb.shape == (20, 50, 3) and not warns
    np.testing.assert_array_equal(rgb[..., 0], grey)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb, warns = read_image(tmp_path / "a.png")
    assert warns == ["alpha channel dropped"] and rgb.shape == (10, 12, 3) and rgb[0, 0, 0] == 200


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb, _ = read_image(tmp_path / "r.jpg")
    assert rgb.shape == (40, 20, 3)
    assert rgb[:15].mean() > 200 and rgb[25:].mean() < 50  # white half now on top


def test_cmyk_jpeg(tmp_path: Path) -> None:
    arr = np.full((16, 16, 3), (200, 30, 30), np.uint8)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    rgb, _ = read_image(tmp_path / "c.jpg")
    assert rgb.shape == (16, 16, 3)
    assert abs(int(rgb[..., 0].mean()) - 200) < 30 and rgb[..., 1].mean() < 80


def test_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for name, msg in (("e.png", "empty"), ("t.png", "not an image"), ("missing.png", "cannot read")):
        with pytest.raises(ImageReadError, match=msg):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_write_is_atomic_and_checks_suffix(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    write_image(tmp_path / "o.png", rgb)
    assert Image.open(io.BytesIO((tmp_path / "o.png").read_bytes())).size == (4, 4)
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "o.xyz", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def _png_header(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR declares the size; the image data is a token IDAT (never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("w", "h"), [(65536, 65536), (70000, 10), (20000, 20000)])
def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path, w: int, h: int) -> None:
    """Issue 21.5: the size limit used to be checked after OpenCV had allocated the whole image
    (cv2.error for 65536², 4.6 GB resident for a 1.5 MB 16-bit PNG of 16000²)."""
    (tmp_path / "bomb.png").write_bytes(_png_header(w, h, depth=16))
    with pytest.raises(ImageReadError, match=f"declares {w}×{h}.*refused before decoding"):
        read_image(tmp_path / "bomb.png")


def test_every_format_is_probed_before_decoding(tmp_path: Path) -> None:
    from hybridflow.runtime.imageprobe import probe

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WebP"), (".tif", "TIFF"), (".bmp", "BMP"),
                        (".ppm", "PNM")):
        ok, buf = cv2.imencode(suffix, rgb)
        info = probe(buf.tobytes())
        assert (info.format, info.width, info.height) == (fmt, 53, 37), suffix
    lossless = io.BytesIO()
    Image.fromarray(rgb).save(lossless, format="WEBP", lossless=True)
    assert probe(lossless.getvalue()).width == 53
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, format="GIF")
    assert (probe(gif.getvalue()).width, probe(gif.getvalue()).frames) == (53, 1)


def test_sixteen_bit_conversion_needs_little_memory(tmp_path: Path) -> None:
    """Peak memory of reading a 16-bit image: the decoded image plus the 8-bit result (the old
    path held a uint32 copy as well, 4× the 8-bit image more)."""
    import subprocess
    import sys

    img16 = np.random.default_rng(1).integers(0, 65536, (2500, 3000, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "big.png"), img16, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    script = (
        "import resource, sys\nfrom hybridflow.runtime.imageio import read_image\n"
        "read_image(sys.argv[2])\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rgb, w = read_image(sys.argv[1])\npeak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((peak - base) / 1024, rgb.nbytes / 2**20, w)\n")
    cv2.imwrite(str(tmp_path / "small.png"), img16[:8, :8])
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.png"), str(tmp_path / "small.png")],
                         capture_output=True, text=True, check=True).stdout.split()
    grown, rgb_mb = float(out[0]), float(out[1])
    assert grown < 3.5 * rgb_mb, (grown, rgb_mb)  # 16-bit input (2×) + 8-bit output (1×) + a block


def test_float_tiff_is_reported_as_float(tmp_path: Path) -> None:
    """Issue 21.10: a float TIFF was reported as "uint8 image converted"."""
    img = np.random.default_rng(2).random((10, 12, 3)).astype(np.float32)
    assert cv2.imwrite(str(tmp_path / "f.tif"), img)
    rgb, warns = read_image(tmp_path / "f.tif")
    assert warns == ["32-bit float TIFF converted to 8 bits (values assumed in [0, 1])"]
    np.testing.assert_array_equal(rgb, np.clip(img[..., ::-1] * 255 + 0.5, 0, 255).astype(np.uint8))
    Image.fromarray(img[..., 0]).save(tmp_path / "g.tif")  # single-channel float: only opens unchanged
    rgb, warns = read_image(tmp_path / "g.tif")
    assert rgb.shape == (10, 12, 3) and "float" in warns[0]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_warn_that_only_the_first_frame_is_used(tmp_path: Path, fmt: str) -> None:
    frames = [Image.fromarray(np.full((20, 30, 3), c, np.uint8)) for c in (10, 200, 90)]
    path = tmp_path / f"a.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb, warns = read_image(path)
    assert any("animated" in w and "only the first frame is used" in w for w in warns), warns
    assert abs(int(rgb.mean()) - 10) <= 2
    frames[0].save(tmp_path / f"still.{fmt.lower()}", format=fmt)
    assert not [w for w in read_image(tmp_path / f"still.{fmt.lower()}")[1] if "animated" in w]


def test_outputs_honour_the_umask_and_force_keeps_the_mode(tmp_path: Path) -> None:
    """Issue 21.8: mkstemp made every output 0600, and --force turned a 0644 file into 0600."""
    import os
    import stat

    from hybridflow.runtime.imageio import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x", overwrite=False)
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
        os.umask(0o077)
        write_bytes_atomic(tmp_path / "b.bin", b"x")
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
        (tmp_path / "a.bin").chmod(0o640)
        write_bytes_atomic(tmp_path / "a.bin", b"new")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
        assert (tmp_path / "a.bin").read_bytes() == b"new"
    finally:
        os.umask(old)


def test_exclusive_creation_has_one_winner(tmp_path: Path) -> None:
    """Issue 21.9: two runs without --force both "succeeded" (check, then write). Creation is a
    link that fails when the name exists, so of racing writers exactly one wins."""
    from concurrent.futures import ThreadPoolExecutor

    from hybridflow.runtime.imageio import write_bytes_atomic

    dst = tmp_path / "out.hfc"

    def attempt(k: int) -> bool:
        try:
            write_bytes_atomic(dst, b"writer %d" % k, overwrite=False)
            return True
        except FileExistsError:
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(attempt, range(16)))
    assert sum(won) == 1
    assert dst.read_bytes() == b"writer %d" % won.index(True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.hfc"]  # no temporary files left
