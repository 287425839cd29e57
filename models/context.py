"""A channel-wise context model for the continuous latent y (Minnen & Singh 2020, "channel-wise
autoregressive"; ELIC's slices), in the form the runtime can run in exact integer arithmetic.

y's channels are cut into ``slices`` equal groups, decoded one after another. The first is coded with
the hyperprior's (μ, σ) as before; for every later slice s a small network reads

    [ μ_s,  idx(σ_s) / 8,  ŷ_<s − μ_<s ]        (hyperprior mean, its scale-table index, decoded slices)

and returns (Δμ, d/STEP_GAIN): the slice is coded around μ' = μ_s + Δμ with the scale-table entry
``d`` steps (rounded) above σ's own, idx(σ·gain) + round(d). The table is log-spaced, so d is a log-scale
correction whose integer part the runtime applies exactly; training uses σ·gain·e^(d·ln step)
(differentiable), the decoder the rounded step. Why these inputs and outputs: every one is an integer
on a 2^-10 grid or an integer, so nearest-free 3×3/1×1 convolutions + ReLU on them are exact in float64
(``runtime/fixedpoint.py``), and encoder and decoder pick bit-identical tables on any CPU.

Measured before it was built (benchmarks/RESULTS.md, session 23): on the frozen s23 codec a context
of this kind saves ≈ 5 % of the continuous stream's bits at the same quantisation error."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..runtime.fixedpoint import CONTEXT_INDEX_INPUT as INDEX_INPUT
from ..runtime.fixedpoint import CONTEXT_STEP_GAIN as STEP_GAIN
from .entropy_models import gaussian_likelihood, scale_table

MAX_STEPS = 16.0  # |d| beyond this many table steps is clamped in training (the runtime clips to the table)


class ChannelContext(nn.Module):
    def __init__(self, latent: int, slices: int, hidden: int, kernel: int = 3):
        super().__init__()
        if slices < 2 or latent % slices:
            raise ValueError(f"a channel context needs ≥ 2 slices that divide the {latent} latent channels, "
                             f"not {slices}")
        if kernel not in (1, 3):
            raise ValueError(f"the context's first convolution is 1×1 or 3×3, not {kernel}×{kernel}")
        self.slices, self.width = slices, latent // slices
        c = self.width
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * c + s * c, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2 * c, 1))
            for s in range(1, slices))
        for net in self.nets:  # a fresh context starts as the plain hyperprior
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        table = torch.tensor(scale_table(), dtype=torch.float32)
        self.register_buffer("table", table, persistent=False)
        self.ln_step = math.log(float(table[-1] / table[0])) / (len(table) - 1)

    def convolutions(self, s: int) -> list[nn.Conv2d]:
        """Slice s's (≥ 1) layers, in order: what the exporter turns into integers."""
        return [m for m in self.nets[s - 1] if isinstance(m, nn.Conv2d)]

    def scale_index(self, scale: torch.Tensor) -> torch.Tensor:
        """The smallest table entry ≥ σ, as ``runtime/entropy.py`` looks it up."""
        return torch.searchsorted(self.table, scale.float().contiguous()).clamp_max(len(self.table) - 1)

    def forward(self, y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                gains: tuple[torch.Tensor, torch.Tensor] | None, noisy: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ŷ as the decoder rebuilds it, in base-point units with straight-through rounding; the
        likelihood of y's symbols). ``noisy``: the likelihood of y + U(−½, ½) with the continuous scale
        (training), else of the rounded symbols with the rounded table step (what the runtime codes)."""
        c = self.width
        if gains is None:
            one = torch.ones(1, y.shape[1], 1, 1, device=y.device)
            gain = inv = one
        else:
            gain, inv = (g.reshape(-1, y.shape[1], 1, 1) for g in gains)
        index = self.scale_index(scale)
        y_hats, liks, prev = [], [], []
        for s in range(self.slices):
            part = slice(s * c, (s + 1) * c)
            m, g, ig = mean[:, part], gain[:, part], inv[:, part]
            if s == 0:
                m2, d = m, torch.zeros_like(m)
            else:
                out = self.nets[s - 1](torch.cat([m, index[:, part].float() * INDEX_INPUT, *prev], 1))
                m2, d = m + out[:, :c], STEP_GAIN * out[:, c:]
            r = y[:, part] * g - m2 * g
            q = r + (torch.round(r) - r).detach()
            y_hat = (q + m2 * g) * ig
            sigma = scale[:, part] * g
            if noisy:
                std = sigma * torch.exp(self.ln_step * d.clamp(-MAX_STEPS, MAX_STEPS))
                liks.append(gaussian_likelihood(r + torch.empty_like(r).uniform_(-0.5, 0.5), torch.zeros_like(r), std))
            else:
                step = (self.scale_index(sigma) + torch.floor(d + 0.5).long()).clamp(0, len(self.table) - 1)
                liks.append(gaussian_likelihood(torch.round(r), torch.zeros_like(r), self.table[step]))
            y_hats.append(y_hat)
            prev.append(y_hat - m)
        return torch.cat(y_hats, 1), torch.cat(liks, 1)
