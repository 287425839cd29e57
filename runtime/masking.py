"""Which codeword indices of a tile's index map are sent, per mask schedule.

``1_k`` sends one index per cell of a regular sub-grid (checkerboard for 1_2). The kept position is
the centre of an odd cell (1_9: offset 1, so 5×5 = 25 of 16×16, 90.2 % masked) and the top-left of an
even one (1_4, 1_16: an even cell has no centre). This is the table in FORMAT.md ("Mask schedules"),
which the tests check against; the predictor is trained on these masks, so changing an offset needs
a retrained model. The map's side is the model's (``tiling.Geometry.grid``: tile ÷ token pixels);
``GRID`` is the one FORMAT.md draws its table for, and what every model so far has."""

from __future__ import annotations

from functools import cache

import numpy as np

SCHEDULES: tuple[str, ...] = ("none", "1_2", "1_4", "1_9", "1_16", "all")
GRID = 16  # FORMAT.md's index map side (its schedule table); callers with a model pass the model's
CHOICES: tuple[str, ...] = (*SCHEDULES, "auto")


def schedule_code(name: str) -> int:
    if name not in SCHEDULES:
        raise ValueError(f"unknown mask schedule {name!r}; choose one of {', '.join(CHOICES)}")
    return SCHEDULES.index(name)


def schedule_name(code: int) -> str:
    if not 0 <= code < len(SCHEDULES):
        raise ValueError(f"invalid schedule code {code}")
    return SCHEDULES[code]


@cache
def _sent(name: str, grid: int) -> np.ndarray:
    i, j = np.mgrid[:grid, :grid]
    if name == "none":
        m = np.ones((grid, grid), bool)
    elif name == "all":
        m = np.zeros((grid, grid), bool)
    elif name == "1_2":
        m = (i + j) % 2 == 0
    else:
        s = {"1_4": 2, "1_9": 3, "1_16": 4}[name]
        off = s // 2 if s % 2 else 0
        m = (i % s == off) & (j % s == off)
    m.setflags(write=False)
    return m


def sent_mask(name: str, grid: int = GRID) -> np.ndarray:
    """(grid, grid) bool, True where the index is transmitted."""
    schedule_code(name)
    return _sent(name, grid)


def masked_fraction(name: str, grid: int = GRID) -> float:
    return 1.0 - float(sent_mask(name, grid).mean())
