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
