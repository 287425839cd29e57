import re
from pathlib import Path

import numpy as np
import pytest

from hybridflow.runtime import masking
from hybridflow.runtime.masking import SCHEDULES, masked_fraction, schedule_code, schedule_name, sent_mask
from hybridflow.runtime.tiling import TileGrid, Window, pad, paint, tile_stack, windowed


@pytest.mark.parametrize(("name", "fraction"), [("none", 0.0), ("1_2", 0.5), ("1_4", 0.75), ("1_9", 0.902),
                                                ("1_16", 0.9375), ("all", 1.0)])
def test_masked_fractions(name: str, fraction: float) -> None:
    assert masked_fraction(name) == pytest.approx(fraction, abs=5e-4)


def test_schedule_codes_round_trip_and_reject_unknown() -> None:
    for code, name in enumerate(SCHEDULES):
        assert schedule_code(name) == code and schedule_name(code) == name
    with pytest.raises(ValueError, match="unknown mask schedule"):
        sent_mask("1_3")
    with pytest.raises(ValueError):
        schedule_name(6)


def _spec_rows() -> dict[str, tuple[int, str, int]]:
    """FORMAT.md's schedule table: name → (code, condition, count)."""
    text = (Path(masking.__file__).parent / "FORMAT.md").read_text()
    section = text[text.index("### Mask schedules") :]
    rows = re.findall(r"^\| (\d) \| (\S+) \| ([^|]+) \| (\d+) \|$", section, re.M)
    return {name: (int(code), cond.strip(), int(count)) for code, name, cond, count in rows}


def _spec_mask(condition: str) -> np.ndarray:
    """Evaluate a FORMAT.md condition such as "i mod 3 = 1 and j mod 3 = 1" on a 16×16 grid."""
    i, j = np.mgrid[:16, :16]
    if condition == "every position":
        return np.ones((16, 16), bool)
    if condition == "no position":
        return np.zeros((16, 16), bool)
    expr = condition.replace("mod", "%").replace("=", "==").replace(" and ", " & ")
    assert re.fullmatch(r"[ij0-9%=+&() ]+", expr), condition
    return eval(re.sub(r"(\([^()]*\)|[ij]) % (\d) == (\d)", r"((\1 % \2) == \3)", expr))  # noqa: S307


def test_every_schedule_matches_the_spec() -> None:
    """Issue 21.12: FORMAT.md said centre where the code kept the corner. The spec table is parsed
    and every schedule's sent positions must equal it exactly."""
    rows = _spec_rows()
    assert list(rows) == list(SCHEDULES)
    for name, (code, condition, count) in rows.items():
        assert schedule_code(name) == code
        expected = _spec_mask(condition)
        np.testing.assert_array_equal(sent_mask(name), expected, err_msg=f"{name}: {condition}")
        assert int(expected.sum()) == count


def test_checkerboard_and_cell_positions() -> None:
    m = sent_mask("1_2")
    assert m[0, 0] and not m[0, 1] and m[1, 1]
    m9 = sent_mask("1_9")
    assert m9[1, 1] and m9[4, 4] and not m9[0, 0] and m9.sum() == 25
    assert sent_mask("1_4")[0, 0] and sent_mask("1_16")[0, 0] and not sent_mask("1_16")[2, 2]


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5000), (256, 256), (257, 255), (700, 1000)])
def test_pad_tiles_place_round_trip(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 7 + w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grid = TileGrid(h, w)
    padded = pad(img, grid)
    assert padded.shape[:2] == grid.padded_shape
    assert padded.shape[0] % 256 == 0 and padded.shape[1] % 256 == 0
    out = np.zeros_like(img)
    tiles = tile_stack(padded, grid, range(grid.count))
    for t in range(grid.count):
        h, w = grid.valid_box(t)
        out[grid.valid_region(t)] = tiles[t][:h, :w]
    np.testing.assert_array_equal(out, img)


def test_valid_tokens_at_edges() -> None:
    grid = TileGrid(700, 1000)  # 3×4 tiles; last column holds 1000-768 = 232 px → 15 token columns
    assert grid.rows == 3 and grid.cols == 4
    last = grid.valid_tokens(grid.count - 1)
    assert last.shape == (16, 16)
    assert last[:, :15].any() and not last[:, 15].any()
    assert last.sum() == (-(-(700 - 512) // 16)) * 15
    assert grid.valid_tokens(0).all()


def _blur_down(x: np.ndarray, factor: int) -> np.ndarray:
    """A 5×5 zero-padded box filter then ×factor subsampling: a stand-in for a strided conv net."""
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    acc = sum(p[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]] for dy in range(5) for dx in range(5))
    return acc[:, :, ::factor, ::factor]


@pytest.mark.parametrize(("h", "w"), [(13, 29), (8, 8), (3, 40)])
def test_windowed_equals_whole_call(h: int, w: int) -> None:
    x = np.random.default_rng(h * w).normal(size=(1, 2, 4 * h, 4 * w))
    whole = _blur_down(x, 4)
    down = windowed(lambda t: _blur_down(t, 4), x, 4, 1, window=3, margin=1)
    assert down.shape == whole.shape and np.allclose(down, whole)
    up = windowed(lambda t: np.repeat(np.repeat(t, 2, axis=2), 2, axis=3), whole, 1, 2, window=4, margin=1)
    assert np.array_equal(up, np.repeat(np.repeat(whole, 2, axis=2), 2, axis=3))


@pytest.mark.parametrize(("h", "w", "window", "margin"), [(7, 9, 2, 2), (10, 5, 3, 1), (4, 11, 4, 0), (9, 9, 1, 1)])
def test_in_place_painting_reads_the_picture_as_it_was(h: int, w: int, window: int, margin: int) -> None:
    """``paint(in_place=True)``: windows that read the picture they refine (the fusion) see it unchanged
    by earlier windows, exactly as windows reading a frozen copy do."""
    start = np.random.default_rng(h + w).integers(0, 9, (2 * h, 2 * w)).astype(np.int64)

    def render_from(source: np.ndarray):  # noqa: ANN202
        def render(win: Window) -> np.ndarray:  # every output depends on every pixel the window reads
            return source[win.read(2)].cumsum(0).cumsum(1) + 1
        return render

    frozen, refined = start.copy(), start.copy()
    expected = np.zeros_like(start)
    n = paint(render_from(frozen), expected, h, w, 2, window, margin)
    assert paint(render_from(refined), refined, h, w, 2, window, margin, in_place=True) == n
    assert np.array_equal(refined, expected)
    assert not np.array_equal(expected, start)
    if margin > 0 and n > 1:  # without the band's wait, later windows would read refined pixels
        naive = start.copy()
        paint(render_from(naive), naive, h, w, 2, window, margin)
        assert not np.array_equal(naive, expected)
    with pytest.raises(ValueError, match="margin"):
        paint(render_from(start), start.copy(), h, w, 2, 1, 2, in_place=True)
