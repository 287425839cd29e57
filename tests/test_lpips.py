"""LPIPS from ../shared/weights/lpips: Alex (the yardstick) and VGG (the training loss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lpips_mod = pytest.importorskip("hybridflow.models.lpips")
pytestmark = pytest.mark.skipif(not lpips_mod.available("alex") or not lpips_mod.available("vgg"),
                                reason="LPIPS weights not found")


def _img(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo[:128, :128].astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_zero_for_identical_and_grows_with_blur(photo: np.ndarray, net: str) -> None:
    import cv2

    m = lpips_mod.LPIPS(net)
    x = _img(photo)
    blurred = [_img(cv2.GaussianBlur(photo, (0, 0), s)) for s in (1.0, 3.0)]
    d0, d1, d3 = (float(m(x, y)[0]) for y in (x, *blurred))
    assert d0 == 0.0 and 0 < d1 < d3 < 1.5


def test_vgg_loss_trains_the_input_not_the_network(photo: np.ndarray) -> None:
    m = lpips_mod.LPIPS("vgg", layers=3)
    y = _img(photo).clone().requires_grad_(True)
    m(_img(photo[::-1].copy()), y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in m.parameters())


def test_image_front_end_matches_the_module(photo: np.ndarray) -> None:
    from hybridflow.runtime.metrics import lpips_alex

    f = lpips_alex()
    assert f is not None
    a, b = photo[:128, :128], np.ascontiguousarray(photo[:128, :128][:, ::-1])
    assert f(a, b) == pytest.approx(float(lpips_mod.LPIPS("alex")(_img(a), _img(b))[0]), rel=1e-6)


def test_missing_weights_are_said_in_one_line(tmp_path: Path) -> None:
    from hybridflow.runtime.metrics import lpips_alex

    said: list[str] = []
    assert lpips_alex(tmp_path, say=said.append) is None
    assert len(said) == 1 and str(tmp_path) in said[0] and "alexnet-features.pth" in said[0]
