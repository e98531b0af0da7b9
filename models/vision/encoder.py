"""A small ViT (SigLIP-style: patch embedding, learned positions, pre-norm blocks, GELU MLP, final norm)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageEncoderConfig:
    image_size: int = 64
    patch: int = 8
    dim: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    summary: int = 0  # extra tokens computed from the whole image (see ImageEncoder)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.summary


class _Block(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ImageEncoder(nn.Module):
    """uint8/float images [B, 3, S, S] (already resized, values in [0, 1]) -> tokens [B, N, dim]."""

    def __init__(self, cfg: ImageEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ImageEncoderConfig()
        if cfg.image_size % cfg.patch:
            raise ValueError("image_size must be a multiple of patch")
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.summary:
            # Cross-attention averages the tokens it attends to, so "how many" is invisible to it when every
            # object's tokens look alike: a token computed from the whole image can carry the count.
            hidden = int(cfg.dim * cfg.mlp_ratio)
            self.summary_mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(),
                                             nn.Linear(hidden, cfg.summary * cfg.dim))
            self.summary_norm = nn.LayerNorm(cfg.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed((images - 0.5) / 0.5).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if not self.cfg.summary:
            return x
        summary = self.summary_mlp(x.mean(1)).view(x.shape[0], self.cfg.summary, x.shape[-1])
        return torch.cat([x, self.summary_norm(summary)], 1)
