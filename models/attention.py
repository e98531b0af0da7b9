"""Causal sliding-window attention over a fixed-size ring KV cache, shared by the codec and the LM.

The cache holds `context + chunk - 1` entries so a chunk of up to `chunk` queries still sees its full
window: streaming is exact for any chunking, and memory stays bounded in endless sessions. Positions are
per batch slot, so sessions that joined at different times share one batched step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.kernels import fused_ok
from models.state import StreamState


def rope_rotate(x: torch.Tensor, positions: torch.Tensor, max_period: float = 10_000.0) -> torch.Tensor:
    """Interleaved rotary embedding. x: [B, H, T, D]; positions: [B, T] absolute step indices.

    Computed in float32 (as Moshi does) and cast back to x's dtype.
    """
    D = x.shape[-1]
    freqs = torch.exp(torch.arange(D // 2, device=x.device, dtype=torch.float32)
                      * (-math.log(max_period) * 2 / D))
    angles = positions.to(torch.float32)[:, None, :, None] * freqs  # [B, 1, T, D/2]
    cos, sin = torch.cos(angles), torch.sin(angles)
    xf = x.to(torch.float32).view(*x.shape[:-1], D // 2, 2)
    xr, xi = xf[..., 0], xf[..., 1]
    out = torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], dim=-1)
    return out.view_as(x).to(x.dtype)


@dataclass
class KVCacheState(StreamState):
    keys: torch.Tensor  # [B, H_kv, capacity, D]
    values: torch.Tensor  # [B, H_kv, capacity, D]
    positions: torch.Tensor  # [B, capacity] long, -1 = empty
    offset: torch.Tensor  # [B] long: absolute position of the next step
    chunk: int = 1  # max queries per write (capacity = context + chunk - 1)

    @classmethod
    def create(cls, batch: int, kv_heads: int, head_dim: int, context: int, chunk: int,
               device=None, dtype=torch.float32) -> KVCacheState:
        capacity = context + chunk - 1
        return cls(
            keys=torch.zeros(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype),
            values=torch.zeros(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype),
            positions=torch.full((batch, capacity), -1, device=device, dtype=torch.long),
            offset=torch.zeros(batch, device=device, dtype=torch.long),
            chunk=chunk,
        )

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]


def _append_and_mask(k, v, cache: KVCacheState, context: int, pos_q: torch.Tensor) -> torch.Tensor:
    """Write this chunk's keys/values/positions into the ring -> mask [B, 1, T, capacity] of what each query sees."""
    B, H, T, D = k.shape
    index = pos_q % cache.capacity  # [B, T]
    cache.keys.scatter_(2, index.view(B, 1, T, 1).expand(B, H, T, D), k)
    cache.values.scatter_(2, index.view(B, 1, T, 1).expand(B, H, T, D), v)
    cache.positions.scatter_(1, index, pos_q)
    delta = pos_q[:, :, None] - cache.positions[:, None, :]  # [B, T, cap]
    return ((cache.positions[:, None, :] >= 0) & (delta >= 0) & (delta < context))[:, None]


def _attend_chunk(q, k, v, cache: KVCacheState, context: int, pos_q: torch.Tensor) -> torch.Tensor:
    mask = _append_and_mask(k, v, cache, context, pos_q)
    return F.scaled_dot_product_attention(q, cache.keys, cache.values, attn_mask=mask,
                                          enable_gqa=cache.keys.shape[1] != q.shape[1])


def streaming_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCacheState,
                        context: int, rope_max_period: float | None) -> torch.Tensor:
    """q: [B, H, T, D], k/v: [B, H_kv, T, D] for the T steps following `cache.offset`. Updates the cache."""
    T = q.shape[2]
    if (T == 1 or cache.chunk == 1) and fused_ok(q):  # on a GPU: two launches per step
        from models.kernels.attention_triton import decode_attention

        outs = [decode_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], cache, context,
                                 rope_max_period) for t in range(T)]  # each step advances the offset
        return outs[0] if T == 1 else torch.cat(outs, dim=2)
    return streaming_attention_reference(q, k, v, cache, context, rope_max_period)


def streaming_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCacheState,
                                  context: int, rope_max_period: float | None) -> torch.Tensor:
    """`streaming_attention` op by op (CPU, training, chunked prefill, and the one-query kernel's oracle)."""
    T = q.shape[2]
    pos = cache.offset[:, None] + torch.arange(T, device=q.device)  # [B, T]
    if rope_max_period is not None:
        rotate = rope_rotate
        if fused_ok(q):  # one launch per tensor
            from models.kernels.rope_triton import rope_fused as rotate
        q, k = rotate(q, pos, rope_max_period), rotate(k, pos, rope_max_period)
    outs = []
    for start in range(0, T, cache.chunk):
        end = min(T, start + cache.chunk)
        outs.append(_attend_chunk(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], cache,
                                  context, pos[:, start:end]))
    cache.offset.add_(T)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def substep_attention_reference(q: torch.Tensor, new_kv: torch.Tensor, kv: torch.Tensor, step: int) -> torch.Tensor:
    """The depformer's sub-step attention op by op: q [B, H, 1, D]; new_kv [B, 1, 2, H_kv, D] this sub-step's
    key and value as projected; kv [B, 2, H_kv, steps, D] the frame's scratch (written at `step`, one copy)."""
    kv[:, :, :, step:step + 1].copy_(new_kv.permute(0, 2, 3, 1, 4))
    return F.scaled_dot_product_attention(q, kv[:, 0, :, :step + 1], kv[:, 1, :, :step + 1],
                                          enable_gqa=kv.shape[2] != q.shape[1])
