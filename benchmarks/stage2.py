"""Stage-2 report (the paper's Figure 4 as numbers): token accuracy and PSNR of the VQ decoder on the
predicted index map, per schedule, with and without the continuous guidance, on Kodak tiles.

    python -m benchmarks.stage2 --vq runs/vq/last.pt --cont runs/cont/last.pt \
        --predictor runs/stage2/last.pt [--ablation runs/stage2_noguide/last.pt] [--grid out.png]

Tiles are the 24 Kodak images cut into whole tiles (6 per image). Without --ablation, "without
guidance" means the guided network fed zero guidance (it was trained with guidance dropout)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.kodak import load_images, whole_tiles
from hybridflow.models import checkpoint
from hybridflow.models.train.tile_cache import load_frozen, tokens_and_guidance
from hybridflow.models.transformer import MaskedTokenPredictor, TransformerConfig
from hybridflow.runtime import metrics
from hybridflow.runtime.masking import sent_mask

SCHEDULES = ("1_2", "1_4", "1_9", "1_16", "all")


def load_predictor(path: Path) -> tuple[MaskedTokenPredictor, bool]:
    ck = checkpoint.load(path)
    model = checkpoint.build_model(ck, MaskedTokenPredictor, TransformerConfig)
    return model, bool(ck.get("train_config", {}).get("use_guidance", True))  # (a split bundle has none)


@torch.no_grad()
def decode(vq, idx: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    out = vq.decode(idx)
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vq", type=Path, required=True)
    ap.add_argument("--cont", type=Path, required=True)
    ap.add_argument("--predictor", type=Path, required=True)
    ap.add_argument("--ablation", type=Path, default=None)
    ap.add_argument("--grid", type=Path, default=Path("benchmarks/out/stage2_grid.jpg"))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    vq, cont = load_frozen(args.vq, args.cont)
    guided, _ = load_predictor(args.predictor)
    ablation, abl_uses_g = load_predictor(args.ablation) if args.ablation else (guided, False)
    images = load_images(limit=args.limit)
    tiles = np.concatenate([whole_tiles(rgb) for _, rgb in images])
    idx, g = zip(*(tokens_and_guidance(vq, cont, tiles[s : s + 16]) for s in range(0, len(tiles), 16)))
    idx, g = torch.cat(idx), torch.cat(g)
    full = decode(vq, idx)
    psnr_full = np.mean([metrics.psnr(a, b) for a, b in zip(tiles, full)])
    print(f"{len(tiles)} Kodak tiles; VQ decoder on the full index map: {psnr_full:.2f} dB\n")
    print("| schedule | masked | acc. guided | acc. unguided | PSNR guided | PSNR unguided | Δ PSNR |")
    print("|---|---|---|---|---|---|---|")
    grid_rows = []
    for name in SCHEDULES:
        vis = torch.from_numpy(np.broadcast_to(sent_mask(name, idx.shape[-1]), idx.shape).copy())
        res = {}
        for label, model, guidance in (("g", guided, g), ("u", ablation, g if abl_uses_g else None)):
            if model is guided and label == "u":
                guidance = torch.zeros_like(g)
            with torch.no_grad():
                pred = torch.cat([model.predict(idx[s : s + 32], vis[s : s + 32],
                                                None if guidance is None else guidance[s : s + 32])
                                  for s in range(0, len(idx), 32)])
            rec = decode(vq, pred)
            acc = float((pred == idx)[~vis].float().mean())
            res[label] = (acc, float(np.mean([metrics.psnr(a, b) for a, b in zip(tiles, rec)])), rec)
        print(f"| {name} | {100 * (1 - vis[0].float().mean()):.1f} % | {res['g'][0]:.3f} | {res['u'][0]:.3f} | "
              f"{res['g'][1]:.2f} | {res['u'][1]:.2f} | {res['g'][1] - res['u'][1]:+.2f} |")
        column = [tiles, full, res["g"][2], res["u"][2]]  # two tiles of each, one above the other
        grid_rows.append(np.concatenate([c[[0, 7]].reshape(-1, *c.shape[2:]) for c in column], axis=1))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.grid), cv2.cvtColor(np.concatenate(grid_rows, axis=0), cv2.COLOR_RGB2BGR))
    print(f"\ngrid (rows: {', '.join(SCHEDULES)} × 2 tiles; columns: original, full map, guided, unguided) → "
          f"{args.grid}")


if __name__ == "__main__":
    main()
