"""Token sampling: temperature + top-k with per-slot, counter-based randomness.

Noise for slot b at step t is a hash of (seed_b, t, stream, vocab index), so a session samples exactly the
same tokens whether it runs alone or batched with others, with no host sync and no RNG object per slot.
Sampling itself is the exponential race argmax(p / E), E ~ Exp(1), equivalent to multinomial sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


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
    """Uniform (0, 1) noise [B, n] from per-slot seeds and step counters (both [B] int64)."""
    idx = torch.arange(n, device=seed.device, dtype=torch.int64)
    h = _mix32(seed[:, None] * 0x9E3779B1 + _mix32(counter[:, None] * 0x85EBCA6B + stream))
    h = _mix32(h + idx[None, :] * 0xC2B2AE35)
    return (h.to(torch.float64) + 0.5).div(2.0**32).to(torch.float32)


def sample(logits: torch.Tensor, temperature: float, top_k: int, seed: torch.Tensor | None = None,
           counter: torch.Tensor | None = None, stream: int = 0) -> torch.Tensor:
    """logits [B, V] -> tokens [B]. Greedy when temperature <= 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    indices = None
    if 0 < top_k < probs.shape[-1]:
        probs, indices = torch.topk(probs, top_k, dim=-1)
    if seed is None or counter is None:
        noise = torch.empty_like(probs).exponential_()
    else:
        noise = -torch.log(counter_uniform(seed, counter, stream, probs.shape[-1]))
    choice = (probs / noise).argmax(dim=-1)
    return choice if indices is None else indices.gather(-1, choice[:, None])[:, 0]
