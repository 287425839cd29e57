"""Stage 2: MAGE-style masked-token predictor guided by the continuous stream.

Encoder: self-attention over the *visible* tokens only (masked positions are excluded as keys, the
equivalent of MAGE dropping them) plus one always-visible buffer token, so an all-masked tile still
has something to attend to. Decoder: masked positions get a learned mask embedding; every block has
self-attention, cross-attention to the continuous guidance ``g`` (16×16 per tile, aligned with the
token grid) and an MLP. One forward pass + argmax restores the map; sent tokens are kept as sent.

Attention is written with ``F.scaled_dot_product_attention`` because it exports to ONNX with
dynamic shapes (``nn.MultiheadAttention`` freezes the memory length under the legacy exporter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    n_codes: int = 1024
    grid: int = 16
    guidance_channels: int = 96
    dim: int = 192
    heads: int = 4
    enc_layers: int = 4
    dec_layers: int = 4
    mlp_ratio: float = 3.0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(h.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, cross: bool):
        super().__init__()
        d = cfg.dim
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, cfg.heads)
        self.ln_x = nn.LayerNorm(d) if cross else None
        self.cross = Attention(d, cfg.heads) if cross else None
        self.ln2 = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, key_mask)
        if self.cross is not None and guidance is not None:
            x = x + self.cross(self.ln_x(x), guidance)
        return x + self.mlp(self.ln2(x))


class MaskedTokenPredictor(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        n, d = cfg.grid * cfg.grid, cfg.dim
        self.tok = nn.Embedding(cfg.n_codes, d)
        self.buffer = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_enc = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.pos_dec = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.pos_guid = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.mask_emb = nn.Parameter(torch.zeros(1, 1, d))
        self.guid_in = nn.Linear(cfg.guidance_channels, d)
        self.encoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_codes)

    def forward(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """idx (B, 16, 16) int64 (values at masked positions are ignored), visible (B, 16, 16) bool,
        guidance (B, C, 16, 16) or None for the unguided ablation. Returns logits (B, 256, n_codes)."""
        b = idx.shape[0]
        vis = visible.reshape(b, -1)
        key_mask = torch.cat([torch.ones_like(vis[:, :1]), vis], dim=1)
        x = torch.cat([self.buffer.expand(b, -1, -1), self.tok(idx.reshape(b, -1))], dim=1) + self.pos_enc
        for blk in self.encoder:
            x = blk(x, key_mask)
        x = self.enc_norm(x)
        x = torch.where(key_mask[..., None], x, self.mask_emb.expand_as(x)) + self.pos_dec
        mem = None
        if guidance is not None:
            mem = self.guid_in(guidance.flatten(2).transpose(1, 2)) + self.pos_guid
        for blk in self.decoder:
            x = blk(x, guidance=mem)
        return self.head(self.dec_norm(x[:, 1:]))

    def predict(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """Full index map: argmax at masked positions, sent tokens kept as sent."""
        pred = self.forward(idx, visible, guidance).argmax(-1).view_as(idx)
        return torch.where(visible, idx, pred)
