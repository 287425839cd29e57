"""benchmarks.compare: per-image changes between two rd runs, as release decisions read them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks.compare import compare, load, report

FIELDS = ["codec", "setting", "image", "bpp", "psnr", "ms_ssim", "lpips"]


def _write(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows(rows)
    return path


def test_changes_are_per_shared_image_with_the_right_direction(tmp_path: Path) -> None:
    base = _write(tmp_path / "a.csv", [
        ("HybridFlow", "auto", "x.png", 0.03, 20.0, 0.70, 0.50),
        ("HybridFlow", "auto", "y.png", 0.04, 22.0, 0.80, 0.40),
        ("HybridFlow", "auto", "only_in_base.png", 0.05, 30.0, 0.90, 0.10),
    ])
    cand = _write(tmp_path / "b.csv", [
        ("HybridFlow", "auto", "x.png", 0.03, 20.5, 0.69, 0.45),
        ("HybridFlow", "auto", "y.png", 0.04, 21.9, 0.81, 0.41),
        ("HybridFlow", "1_4", "x.png", 0.04, 21.0, 0.70, 0.40),  # a setting the baseline lacks: left out
    ])
    got = {c.metric: c for c in compare(load(base), load(cand))[("HybridFlow", "auto")]}
    assert list(compare(load(base), load(cand))) == [("HybridFlow", "auto")]
    assert got["psnr"].images == 2
    assert got["psnr"].delta == pytest.approx(0.2)  # (20.5 + 21.9 − 20 − 22) / 2
    assert got["psnr"].better == 1
    assert got["lpips"].delta == pytest.approx(-0.02) and got["lpips"].better == 1  # lower is better
    assert got["ms_ssim"].better == 1
    assert got["bpp"].better == 0 and got["bpp"].delta == 0
    assert "bytes differ" not in report(compare(load(base), load(cand)))


def test_different_bytes_are_flagged(tmp_path: Path) -> None:
    base = _write(tmp_path / "a.csv", [("HybridFlow", "auto", "x.png", 0.03, 20.0, 0.7, 0.5),
                                       ("HybridFlow", "auto", "y.png", 0.03, 20.0, 0.7, 0.5)])
    cand = _write(tmp_path / "b.csv", [("HybridFlow", "auto", "x.png", 0.02, 20.0, 0.7, 0.5),
                                       ("HybridFlow", "auto", "y.png", 0.04, 20.0, 0.7, 0.5)])
    assert "bytes differ" in report(compare(load(base), load(cand)))
