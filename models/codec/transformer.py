"""Mimi's encoder/decoder transformer: pre-LayerNorm, RoPE, sliding window, GELU MLP, LayerScale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import KVCacheState, streaming_attention
from models.state import StreamState


@dataclass
class CodecTransformerConfig:
    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10_000.0
    layer_scale: float = 0.01
    norm_eps: float = 1e-5


@dataclass
class TransformerState(StreamState):
    layers: list  # KVCacheState per layer


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SelfAttention(nn.Module):
    """Fused q|k|v projection named like the published checkpoints (`in_proj_weight`, `out_proj`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCacheState, context: int, max_period: float) -> torch.Tensor:
        B, T, C = x.shape
        qkv = F.linear(x, self.in_proj_weight).view(B, T, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
        y = streaming_attention(q, k, v, cache, context, max_period)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class CodecTransformerLayer(nn.Module):
    def __init__(self, cfg: CodecTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn = SelfAttention(cfg.d_model, cfg.num_heads)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=False)
        self.layer_scale_1 = LayerScale(cfg.d_model, cfg.layer_scale)
        self.layer_scale_2 = LayerScale(cfg.d_model, cfg.layer_scale)

    def forward(self, x: torch.Tensor, cache: KVCacheState) -> torch.Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), cache, self.cfg.context, self.cfg.max_period))
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


class CodecTransformer(nn.Module):
    """Operates in conv layout [B, C, T] like Mimi's ProjectedTransformer (input/output dims equal)."""

    def __init__(self, cfg: CodecTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([CodecTransformerLayer(cfg) for _ in range(cfg.num_layers)])

    def init_state(self, batch: int, device=None, chunk: int = 16) -> TransformerState:
        device = device or self.layers[0].linear1.weight.device
        head_dim = self.cfg.d_model // self.cfg.num_heads
        return TransformerState([
            KVCacheState.create(batch, self.cfg.num_heads, head_dim, self.cfg.context, chunk, device)
            for _ in self.layers
        ])

    def forward(self, x: torch.Tensor, state: TransformerState) -> torch.Tensor:
        x = x.transpose(1, 2)
        for layer, cache in zip(self.layers, state.layers):
            x = layer(x, cache)
        return x.transpose(1, 2)
