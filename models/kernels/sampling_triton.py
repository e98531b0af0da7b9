"""Seeded top-k sampling in one Triton launch: temperature, top-k, counter-based noise and argmax on device.

One program per row holds the whole row in registers. The k-th largest logit is found exactly by a radix
search over the logits' order-preserving 32-bit keys (32 counting passes over registers, no sort), then the
Gumbel-max race runs over the candidates. The numbers are those of `models.lm.sampling.sample_reference`
(same hash, 24-bit uniforms exact in float32); only `log`'s last bit may differ, which can flip a token only
when two candidates' scores tie to within rounding. Tests compare both (on CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

from models.kernels import HAVE_TRITON, falls_back_to, require_triton
from models.lm.sampling import COUNTER_MUL, INDEX_MUL, SEED_MUL, sample_reference

if HAVE_TRITON:
    import triton
    import triton.language as tl

    _SEED_MUL: tl.constexpr = tl.constexpr(SEED_MUL)
    _COUNTER_MUL: tl.constexpr = tl.constexpr(COUNTER_MUL)
    _INDEX_MUL: tl.constexpr = tl.constexpr(INDEX_MUL)

    @triton.jit
    def _mul32(x, c: tl.constexpr):
        """x * c modulo 2**32 (x uint32)."""
        return x * tl.full([], c, tl.uint32)

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = _mul32(x, 0x7FEB352D)
        x = x ^ (x >> 15)
        x = _mul32(x, 0x846CA68B)
        return x ^ (x >> 16)

    @triton.jit
    def _sample_kernel(logits_ptr, row_stride, seed_ptr, counter_ptr, out_ptr, V, inv_temperature, top_k, stream,
                       USE_TOP_K: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        valid = offs < V
        x = tl.load(logits_ptr + row * row_stride + offs, mask=valid, other=0.0).to(tl.float32)

        candidate = valid
        if USE_TOP_K:
            # Order-preserving unsigned key of each float: flip all bits of negatives, the sign bit of the rest.
            bits = x.to(tl.uint32, bitcast=True)
            negative = (bits >> 31) == 1
            key = tl.where(negative, ~bits, bits | 0x80000000)
            key = tl.where(valid, key, 0)
            # Largest t with #{key >= t} >= k, built bit by bit from the top: exactly the k-th largest key.
            kth = tl.zeros([], dtype=tl.uint32)
            for b in range(31, -1, -1):
                trial = kth | (tl.full([], 1, tl.uint32) << b)
                count = tl.sum((key >= trial).to(tl.int32), axis=0)
                kth = tl.where(count >= top_k, trial, kth)
            candidate = valid & (key >= kth)

        seed = tl.load(seed_ptr + row).to(tl.uint32)
        counter = tl.load(counter_ptr + row).to(tl.uint32)
        base = _mix32(_mul32(seed, _SEED_MUL) + _mix32(_mul32(counter, _COUNTER_MUL) + stream))
        h = _mix32(base + _mul32(offs.to(tl.uint32), _INDEX_MUL))
        u = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        score = x * inv_temperature - tl.log(-tl.log(u))
        score = tl.where(candidate, score, float("-inf"))
        tl.store(out_ptr + row, tl.argmax(score, axis=0).to(tl.int64))


@falls_back_to("sampling", sample_reference)
def sample_fused(logits: torch.Tensor, temperature: float, top_k: int, seed: torch.Tensor, counter: torch.Tensor,
                 stream: int = 0) -> torch.Tensor:
    """logits [B, V] (any float dtype, rows may be strided) -> tokens [B] int64; temperature > 0."""
    require_triton("models.lm.sampling.sample_reference")
    if temperature <= 0:
        raise ValueError("sample_fused needs temperature > 0 (greedy is an argmax)")
    B, V = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    use_top_k = 0 < top_k < V
    block = triton.next_power_of_2(V)
    _sample_kernel[(B,)](logits, logits.stride(0), seed, counter, out, V, 1.0 / temperature, top_k, stream,
                         USE_TOP_K=use_top_k, BLOCK=block, num_warps=4 if block <= 4096 else 16)
    return out
