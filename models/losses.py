"""Training losses that need no downloaded weights.

No AlexNet/VGG weights exist here, so the "perceptual" term is honestly named: multi-scale SSIM
(structure at several scales) plus an FFT-amplitude loss that penalises missing high-frequency
energy (blur) without asking for pixel-exact phase."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    w = win.expand(c, 1, -1, -1)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Mean MS-SSIM of images in [0, 1]; fewer scales than the usual 5 so 128² crops work."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
    weights = weights / weights.sum()
    win = _gaussian_window().to(x)
    vals = []
    for s in range(scales):
        ssim, cs = _ssim_parts(x, y, win)
        vals.append(ssim if s == scales - 1 else cs)
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(vals, dim=1).clamp_min(1e-6)
    return torch.prod(stacked ** weights.to(x), dim=1).mean()


def fft_amplitude_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fx = torch.fft.rfft2(x, norm="ortho").abs()
    fy = torch.fft.rfft2(y, norm="ortho").abs()
    return F.l1_loss(fx, fy)


def perceptual_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1]. (1 − MS-SSIM) + FFT-amplitude L1."""
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    return (1 - ms_ssim(x01.clamp(0, 1), y01)) + fft_amplitude_loss(x01, y01)


_LAPLACIAN = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None]


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, 1, H, W), BT.601 weights like ``runtime.metrics.luma``."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def local_energy(x: torch.Tensor, window: int = 8) -> torch.Tensor:
    """Mean squared luma Laplacian in ``window``² cells: how much fine detail each region holds
    (the benchmarks' sharpness ratio is the image-wide mean of the same quantity)."""
    return F.avg_pool2d(F.conv2d(_luma(x), _LAPLACIAN.to(x)) ** 2, window)


def local_detail(x: torch.Tensor, window: int = 8) -> torch.Tensor:
    """RMS of the luma Laplacian in ``window``² cells."""
    return local_energy(x, window).clamp_min(1e-8).sqrt()


TEXTURE_MATCHES = ("rms", "energy", "oriented", "oriented_total")  # what texture_energy_loss can compare


def texture_energy_loss(x: torch.Tensor, y: torch.Tensor, match: str = "rms") -> torch.Tensor:
    """L1 between the local detail of reconstruction and original. It asks for the *amount* of fine
    detail in each 8×8 region, not its exact phase, so the decoder may draw plausible texture
    instead of the blur that pixel losses favour when the codes cannot say more.

    ``match="rms"`` compares RMS values: every region pulls equally, and a decoder that cannot tell
    where detail belongs spreads it evenly (noise on flat regions, too little on busy ones).
    ``match="energy"`` compares squared values relative to the original's mean energy: busy regions,
    where most of the detail is, pull hardest, and flat ones barely ask for any."""
    if match == "rms":
        return F.l1_loss(local_detail(x), local_detail(y))
    if match == "energy":
        return _relative_l1(local_energy(x), local_energy(y))
    if match == "oriented":
        return oriented_energy_loss(x, y)
    if match == "oriented_total":  # both terms of oriented_energy_loss, from one pass over the energies
        pairs = _oriented_energies(x, y)
        return sum(_relative_l1(ex, ey) + _crop_log_ratio(ex, ey) for ex, ey in pairs) / len(pairs)
    raise ValueError(f"unknown texture match {match!r}")


def _relative_l1(ex: torch.Tensor, ey: torch.Tensor) -> torch.Tensor:
    return (ex - ey).abs().mean() / ey.mean().detach().clamp_min(1e-6)


_D2 = torch.tensor([1.0, -2.0, 1.0])


def _oriented_energies(x: torch.Tensor, y: torch.Tensor, window: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(reconstruction, original) block energies of horizontal and of vertical second differences of
    the luma, at full and at half resolution: four pairs of (B, 1, h, w) maps."""
    pairs = []
    luma_x, luma_y = _luma(x), _luma(y)
    for scale in (1, 2):
        lx, ly = (luma_x, luma_y) if scale == 1 else (F.avg_pool2d(luma_x, scale), F.avg_pool2d(luma_y, scale))
        for kernel in (_D2.view(1, 1, 1, 3), _D2.view(1, 1, 3, 1)):
            ex = F.avg_pool2d(F.conv2d(lx, kernel.to(x)) ** 2, window // scale, ceil_mode=True)
            ey = F.avg_pool2d(F.conv2d(ly, kernel.to(y)) ** 2, window // scale, ceil_mode=True)
            pairs.append((ex, ey))
    return pairs


def _crop_log_ratio(ex: torch.Tensor, ey: torch.Tensor) -> torch.Tensor:
    """|log| of each crop's mean energy ÷ the original's, averaged over the batch."""
    ratio = (ex.mean(dim=(1, 2, 3)) + 1e-6) / (ey.mean(dim=(1, 2, 3)) + 1e-6)
    return ratio.log().abs().mean()


def oriented_energy_loss(x: torch.Tensor, y: torch.Tensor, window: int = 8, total: bool = False) -> torch.Tensor:
    """Local energy of horizontal and of vertical second differences, at full and at half resolution,
    each matched on its own. A single isotropic statistic can be met by cheap patterns — a network
    trained against the Laplacian energy learned to draw one-pixel horizontal lines, which carry
    Laplacian energy and no detail. Lines in one direction miss the other direction's energy, and
    one-pixel patterns vanish at half resolution, so neither satisfies this loss.

    ``total=True`` compares each crop's mean energy instead (as |log ratio|). An L1 over blocks aims at
    the median of what the codes allow, which for heavy-tailed detail is below the mean, so busy
    images came out with about half the original's detail; the crop total asks for the mean, which
    is what the benchmarks' image-wide sharpness ratio measures."""
    pairs = _oriented_energies(x, y, window)
    term = _crop_log_ratio if total else _relative_l1
    return sum(term(ex, ey) for ex, ey in pairs) / len(pairs)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def gan_ramp(step: int, warmup: int) -> float:
    """Share of the GAN weight at ``step``: linear from 0 over ``warmup`` steps, so a fresh discriminator
    does not push the generator before it has learnt anything; ``warmup`` 0 (a discriminator that has,
    e.g. ``--disc-init``) gives the full weight from the first step."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """‖∇ rec‖ / ‖∇ gan‖ at the last layer (Esser et al., VQGAN), detached and clamped."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()
