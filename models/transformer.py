"""Stage 2: MAGE-style masked-token predictor guided by the continuous stream.

Encoder: self-attention over the *visible* tokens only (masked positions are excluded as keys, the
equivalent of MAGE dropping them) plus one always-visible buffer token, so an all-masked tile still
has something to attend to. Decoder: masked positions get a learned mask embedding; every block has
self-attention, cross-attention to the continuous guidance ``g`` (16×16 per tile, aligned with the
token grid) and an MLP. One forward pass + argmax restores the map; sent tokens are kept as sent.

Two options (on in new checkpoints, off in old ones so they still load):
- ``code_dim > 0``: tokens are embedded from, and scored against, the frozen VQ codebook vectors
  (plus a free per-code term). Codes that decode alike then look alike to the network, so a few
  thousand training tiles teach it about all 1024 codes, and its mistakes tend to be near misses.
- ``guidance_input``: the guidance at each token's own position is also added to that position's
  decoder input; cross-attention alone has to find the aligned position by content first.

Attention is written with ``F.scaled_dot_product_attention`` because it exports to ONNX with
dynamic shapes (``nn.MultiheadAttention`` freezes the memory length under the legacy exporter)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    n_codes: int = field(default=1024, metadata={"derived": "the VQ model's codebook size"})
    grid: int = field(default=16, metadata={"derived": "the token grid of one tile"})
    guidance_channels: int = field(default=96, metadata={"derived": "the continuous codec's guidance channels"})
    dim: int = field(default=192, metadata={"help": "width of the transformer"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    enc_layers: int = field(default=4, metadata={"help": "encoder blocks (self-attention over visible tokens)"})
    dec_layers: int = field(default=4, metadata={"help": "decoder blocks (self- and cross-attention)"})
    mlp_ratio: float = field(default=3.0, metadata={"help": "MLP width ÷ dim"})
    # >0: embed/score tokens through the VQ codebook (``set_codebook``)
    code_dim: int = field(default=0, metadata={"derived": "the VQ code dimension, or 0 (stage 2's use_codebook)"})
    # off here, so that checkpoints written before the option existed load as they were trained
    guidance_input: bool = field(default=False, metadata={"help": "also add the aligned guidance to each "
                                                                  "decoder position"})


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
        if cfg.code_dim:
            nn.init.normal_(self.tok.weight, std=0.02)
            self.register_buffer("codebook", torch.zeros(cfg.n_codes, cfg.code_dim))
            self.code_in = nn.Linear(cfg.code_dim, d)
            self.code_out = nn.Linear(d, cfg.code_dim)
        self.buffer = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_enc = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.pos_dec = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.pos_guid = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.mask_emb = nn.Parameter(torch.zeros(1, 1, d))
        self.guid_in = nn.Linear(cfg.guidance_channels, d)
        self.guid_add = nn.Linear(cfg.guidance_channels, d) if cfg.guidance_input else None
        self.encoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_codes)

    def set_codebook(self, codebook: torch.Tensor) -> None:
        """The VQ model's (normalised) code vectors; frozen, saved with the predictor."""
        self.codebook.copy_(codebook)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.tok(idx)
        return e + self.code_in(self.codebook[idx]) if self.cfg.code_dim else e

    def encode(self, idx: torch.Tensor, visible: torch.Tensor, compact: bool = True) -> torch.Tensor:
        """Encoder over the visible tokens → (B, 257, d), masked positions filled with the mask
        embedding. ``compact`` (the default, and the exported graph's form) gathers the visible tokens
        first and runs the blocks on those only, padded to the batch's largest count: at 1_4 a quarter of
        the positions, so 1/16 of the attention. ``compact=False`` runs the blocks over all 257 positions
        with masked keys: the same result, kept as the reference the test compares with. The gather is a
        ``topk`` over scores unique per position (visible first, each in raster order), so the count is
        a tensor and the exported graph's shapes follow the data."""
        b = idx.shape[0]
        vis = visible.reshape(b, -1)
        key_mask = torch.cat([torch.ones_like(vis[:, :1]), vis], dim=1)
        x = torch.cat([self.buffer.expand(b, -1, -1), self.embed(idx.reshape(b, -1))], dim=1) + self.pos_enc
        if compact:
            n = key_mask.shape[1]
            count = key_mask.sum(1)
            place = torch.arange(n, device=idx.device)
            score = key_mask.float() * n + (n - 1 - place).float()  # distinct integers, exact in float32
            order = torch.topk(score, count.max(), dim=1).indices
            valid = place[None, : order.shape[1]] < count[:, None]
            sel = order[..., None].expand(-1, -1, x.shape[-1])
            h = x.gather(1, sel)
            for blk in self.encoder:
                h = blk(h, valid)
            x = torch.zeros_like(x).scatter(1, sel, self.enc_norm(h))
        else:
            for blk in self.encoder:
                x = blk(x, key_mask)
            x = self.enc_norm(x)
        return torch.where(key_mask[..., None], x, self.mask_emb.expand_as(x))

    def hidden(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None,
               compact: bool = True) -> torch.Tensor:
        """Decoder output for the 256 positions, (B, 256, d), before the head."""
        x = self.encode(idx, visible, compact) + self.pos_dec
        mem = None
        if guidance is not None:
            g = guidance.flatten(2).transpose(1, 2)
            mem = self.guid_in(g) + self.pos_guid
            if self.guid_add is not None:
                x = x + F.pad(self.guid_add(g), (0, 0, 1, 0))
        for blk in self.decoder:
            x = blk(x, guidance=mem)
        return self.dec_norm(x[:, 1:])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = self.head(h)
        return out + self.code_out(h) @ self.codebook.T if self.cfg.code_dim else out

    def forward(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """idx (B, 16, 16) int64 (values at masked positions are ignored), visible (B, 16, 16) bool,
        guidance (B, C, 16, 16) or None for the unguided ablation. Returns logits (B, 256, n_codes)."""
        return self.logits(self.hidden(idx, visible, guidance))

    def predict(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """Full index map: argmax at masked positions, sent tokens kept as sent."""
        pred = self.forward(idx, visible, guidance).argmax(-1).view_as(idx)
        return torch.where(visible, idx, pred)

    def codes(self, idx: torch.Tensor, visible: torch.Tensor, guidance: torch.Tensor | None,
              soft: bool, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """What the pixel decoder reads, (B, code_dim, 16, 16): the sent tokens' code vectors, and at
        masked positions either the argmax's code (``soft`` False: the index map of ``predict``) or
        the expected code under the predicted distribution. One-pass prediction is right for only
        ≈ 1 masked token in 8; the argmax then draws confident, wrong content, where the expectation
        hedges between the likely codes (val, 1_4, before any retraining: +0.25 dB). The code vectors
        are the predictor's own copy of the codebook, or ``codebook`` for one trained without it."""
        return self.code_image(self.forward(idx, visible, guidance), idx, visible, soft, codebook)

    def code_image(self, logits: torch.Tensor, idx: torch.Tensor, visible: torch.Tensor, soft: bool,
                   codebook: torch.Tensor | None = None) -> torch.Tensor:
        """``codes`` from logits already computed (B, 256, n_codes). Stage 3 keeps the logits for a
        cross-entropy anchor when it fine-tunes the predictor through the pixel decoder: the
        expectation is differentiable in them."""
        book = self.codebook if self.cfg.code_dim else codebook
        if book is None:
            raise ValueError("this predictor was trained without the VQ codebook (code_dim 0): pass the codebook")
        logits = logits.view(*idx.shape, -1)
        picked = logits.softmax(-1) @ book if soft else book[logits.argmax(-1)]
        return torch.where(visible[..., None], book[idx], picked).permute(0, 3, 1, 2)
