"""Token sampling: temperature + top-k with per-slot, counter-based randomness.

Noise for slot b at step t is a hash of (seed_b, t, stream, vocabulary id), so a session samples exactly the
same tokens whether it runs alone or batched with others, with no host sync and no RNG object per slot.
Sampling is the Gumbel-max race: argmax over the top-k candidates of logit / T + Gumbel noise, which draws
from softmax(logit / T) restricted to those candidates. The candidates are every id whose logit reaches the
k-th largest one (ties at the boundary are all kept), a definition a one-pass GPU kernel can compute exactly:
`models/kernels/sampling_triton.py` is the fused on-device version of `sample_reference` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.kernels import fused_ok

_MASK32 = 0xFFFFFFFF
# Hash constants, shared with the Triton kernel.
SEED_MUL, COUNTER_MUL, INDEX_MUL = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35


@dataclass
class SamplingConfig:
    temperature: float = 0.8
    top_k: int = 250
    text_temperature: float = 0.7
    text_top_k: int = 25

    @classmethod
    def greedy(cls) -> SamplingConfig:
        return cls(temperature=0.0, top_k=0, text_temperature=0.0, text_top_k=0)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on values held in int64 (only the low 32 bits matter)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """Uniform (0, 1) noise [B, n] for vocabulary ids 0..n-1 from per-slot seeds and step counters ([B] int64).

    24 random bits per value, so every value is exact in float32 (the kernel computes the same numbers)."""
    idx = torch.arange(n, device=seed.device, dtype=torch.int64)
    h = _mix32(seed[:, None] * SEED_MUL + _mix32(counter[:, None] * COUNTER_MUL + stream))
    h = _mix32(h + idx[None, :] * INDEX_MUL)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)


def top_k_mask(logits: torch.Tensor, top_k: int) -> torch.Tensor | None:
    """[B, V] bool: the ids whose logit reaches the k-th largest of their row (None: every id)."""
    if not 0 < top_k < logits.shape[-1]:
        return None
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
    return logits >= kth


def sample_reference(logits: torch.Tensor, temperature: float, top_k: int, seed: torch.Tensor,
                     counter: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """The pure-PyTorch definition of seeded sampling: logits [B, V] -> tokens [B] (int64)."""
    scores = logits.float() / temperature - torch.log(-torch.log(counter_uniform(seed, counter, stream,
                                                                                logits.shape[-1])))
    mask = top_k_mask(logits.float(), top_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.argmax(dim=-1)


def sample(logits: torch.Tensor, temperature: float, top_k: int, seed: torch.Tensor | None = None,
           counter: torch.Tensor | None = None, stream: int = 0) -> torch.Tensor:
    """logits [B, V] -> tokens [B]. Greedy when temperature <= 0; one fused kernel on a GPU with Triton."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if seed is None or counter is None:  # unseeded: the framework's RNG
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        mask = top_k_mask(logits.float(), top_k)
        if mask is not None:
            probs = probs * mask
        return torch.multinomial(probs, 1)[:, 0]
    if fused_ok(logits):
        from models.kernels.sampling_triton import sample_fused

        return sample_fused(logits, temperature, top_k, seed, counter, stream)
    return sample_reference(logits, temperature, top_k, seed, counter, stream)
