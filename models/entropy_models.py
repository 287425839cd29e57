"""Differentiable rate models used while training the continuous codec.

At export time both are turned into static tables (``pmf_table``, the scale table) so that the
runtime entropy-codes with NumPy + constriction only."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_BOUND = 1e-9


class FactorizedPrior(nn.Module):
    """Ballé et al. (2018) non-parametric per-channel density for the hyper-latent ẑ.

    Each channel's CDF is a small monotone MLP of its input; the likelihood of an integer
    symbol k is cdf(k + ½) − cdf(k − ½)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        # x: (C, 1, N)
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(m), x) + b
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, C, H, W), already noisy or rounded."""
        c = z.shape[1]
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cdf(v - 0.5)
        upper = self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(c, z.shape[0], z.shape[2], z.shape[3]).permute(1, 0, 2, 3)
        return lik.clamp_min(LIKELIHOOD_BOUND)

    @torch.no_grad()
    def pmf_table(self, radius: int) -> np.ndarray:
        """(C, 2·radius+1) probabilities of symbols −radius … radius; tails folded into the ends.

        Computed in float64 and snapped to a fixed-point grid (:func:`fixed_point_pmf`): float
        results differ between CPUs in their last bits, and the table is part of the model id and
        of every stream, so two machines exporting one checkpoint must store the same numbers."""
        c = self.matrices[0].shape[0]
        k = torch.arange(-radius, radius + 1, dtype=torch.float64)
        v = k.view(1, 1, -1).expand(c, 1, -1)
        prior = copy.deepcopy(self).double()
        cdf_hi = torch.sigmoid(prior._logits_cdf(v + 0.5)).squeeze(1)
        cdf_lo = torch.sigmoid(prior._logits_cdf(v - 0.5)).squeeze(1)
        pmf = cdf_hi - cdf_lo
        pmf[:, 0] += cdf_lo[:, 0]
        pmf[:, -1] += 1 - cdf_hi[:, -1]
        return fixed_point_pmf(pmf.numpy())


PMF_BITS = 24


def fixed_point_pmf(pmf: np.ndarray, bits: int = PMF_BITS) -> np.ndarray:
    """Rows of probabilities → rows of integer multiples of 2^-bits that sum to exactly 1, every
    entry ≥ 2^-bits. Values that differ by float noise (≈1e-16) land on the same grid point except
    with probability ≈ 2^bits · 1e-16, so the stored table does not depend on the machine."""
    total = 1 << bits
    counts = np.maximum(np.round(np.clip(pmf, 0, None) / pmf.sum(axis=1, keepdims=True) * total), 1).astype(np.int64)
    rows = np.arange(counts.shape[0])
    counts[rows, counts.argmax(axis=1)] += total - counts.sum(axis=1)  # the largest bin absorbs the rounding
    return counts / np.float64(total)


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(round(y)) under N(mean, scale²) discretised to unit bins."""
    v = torch.abs(y - mean)
    scale = scale.clamp_min(0.11)
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scale * math.sqrt(2)))
    return (upper - lower).clamp_min(LIKELIHOOD_BOUND)


def scale_table(levels: int = 64, lo: float = 0.11, hi: float = 64.0) -> np.ndarray:
    """Log-spaced standard deviations the runtime may use; predicted scales are rounded up to one."""
    table = np.exp(np.linspace(math.log(lo), math.log(hi), levels))
    return np.round(table * 2**20) / 2**20  # snapped to a grid: np.exp's last bit depends on the CPU's SIMD path
