import numpy as np
import pytest

from hybridflow.runtime.complexity import ComplexityModel, raw_metrics


def _tiles(n: int, seed: int = 0) -> list[np.ndarray]:
    """Tiles from flat to noisy: a smooth gradient plus noise of growing amplitude."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, 64)[None, :, None] * np.ones((64, 1, 3))
    return [np.clip(ramp + rng.normal(0, a, (64, 64, 3)), 0, 255).astype(np.uint8) for a in np.linspace(0, 80, n)]


def test_busier_tiles_score_higher() -> None:
    tiles = _tiles(20)
    cm = ComplexityModel.fit(tiles)
    scores = [cm.score(t) for t in tiles]
    assert scores[0] < scores[10] < scores[-1]
    assert cm.schedule(tiles[0]) == "1_9" and cm.low_threshold == 0.24
    assert np.all(raw_metrics(tiles[-1]) > raw_metrics(tiles[0]))


@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_sparse_share_sets_the_fraction_of_training_tiles_below_the_low_threshold(share: float) -> None:
    tiles = _tiles(101, seed=1)
    cm = ComplexityModel.fit(tiles, sparse_share=share)
    below = np.mean([cm.schedule(t) == "1_9" for t in tiles])
    assert below == pytest.approx(share, abs=0.02)


def test_rate_model_share() -> None:
    from hybridflow.models.train.release import sparse_share

    uniform = np.ones(1024)  # 10 bits per index; 1_4 sends 64 indices per tile, 1_9 sends 25
    assert sparse_share(0.1, uniform, 1000.0) == pytest.approx(0.1 * 1640 / 390)
    assert sparse_share(0.0, uniform, 1000.0) == 0.0
    assert sparse_share(0.9, uniform, 1000.0) == 1.0  # more than all-1_9 can save: clipped
