"""``hf-train pack``: the training pack that travels to a GPU window is deterministic and within its size."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

pytest.importorskip("torch")


def make_pack(out: Path, synthetic_data: Path, cache: Path, **kw: object) -> dict:
    from hybridflow.models.train.pack import PackConfig, build

    kw = {"vgg_blocks": 0, "alex": False, **kw}
    cfg = PackConfig(out=str(out), cache_dir=str(cache), val_crops=2, val_share=0.2, **kw)
    return build(cfg)


def test_pack_is_deterministic_and_within_its_size(synthetic_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    a = make_pack(tmp_path / "a", synthetic_data, tmp_path / "cache", mib=1.0, seed=3)
    b = make_pack(tmp_path / "b", synthetic_data, tmp_path / "cache", mib=1.0, seed=3)
    c = make_pack(tmp_path / "c", synthetic_data, tmp_path / "cache", mib=1.0, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.webp"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.webp"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    first = "train/00000.webp"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
    assert a["val_crops"] == 2 and a["train_crops"] > 12  # several passes over the 12 training images
    assert a["bytes"] <= 1 << 20 and sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.webp")) == a["bytes"]
    assert a == {**b, "config": a["config"]} and c["bytes"] <= 1 << 20
    crop = cv2.imread(str(tmp_path / "a" / "train" / "00000.webp"))
    assert crop.shape == (384, 384, 3)


def test_pack_carries_the_lpips_weights_it_names(synthetic_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first VGG blocks and AlexNet in fp16: the same LPIPS-VGG (its file is fp16 already), LPIPS-Alex
    within fp16 rounding."""
    import torch

    from hybridflow.models import lpips

    if not (lpips.available("vgg") and lpips.available("alex")):
        pytest.skip("no LPIPS weights in ../shared/weights/lpips")
    shared = lpips.weights_dir()
    monkeypatch.setenv(lpips.ENV, str(shared))  # (it follows HF_DATA otherwise)
    monkeypatch.setenv("HF_DATA", str(synthetic_data))
    info = make_pack(tmp_path / "p", synthetic_data, tmp_path / "cache", mib=6.0, vgg_blocks=2, alex=True)
    folder = tmp_path / "p" / "lpips"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5.5 * (1 << 20) < info["bytes"]
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    packed, full = (lpips.LPIPS("vgg", layers=2, folder=f)(x, y) for f in (folder, shared))
    assert torch.equal(packed, full)
    packed, full = (lpips.LPIPS("alex", folder=f)(x, y) for f in (folder, shared))
    assert torch.allclose(packed, full, rtol=1e-2)
    with pytest.raises(KeyError):
        lpips.LPIPS("vgg", layers=3, folder=folder)  # a third block was not packed
