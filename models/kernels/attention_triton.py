"""One-query attention steps in one or two launches: the ring KV cache's frame step and the depformer's sub-step.

At batch 1 a frame step is launch-bound, and SDPA gives a one-query step one thread block per head (32 for
Moshi 7B, on a GPU of 132 SMs), each walking a 3000-entry ring alone. Done op by op (the reference is
`models.attention.streaming_attention`'s PyTorch path), a step costs 7 launches per layer even with fused
rotary and ring-append kernels (positions, two rotary calls, append + mask, attention, offset). Here one
kernel does the work, split over the ring (flash-decoding):

- program (row b, head h, split s) rotates its query and the step's new key (rotary embedding, float32),
  attends to ring entries [s * span, (s + 1) * span) that are in the window (tested from the positions
  as they were), and, on split 0, to the new key/value from registers;
- the slot being overwritten (`position % capacity`) is left out of every ring read, so no ordering between
  the programs' reads and the writes (split 0 of each key head writes the new key/value, head 0 the position)
  matters;
- a second launch merges the splits' partial softmaxes (max, sum, weighted values) and advances the offset
  (every read of it was in the first launch).

The depformer's sub-step uses the same kernel over its within-frame scratch: entries 0..k-1 are visible,
sub-step k's key/value go to entry k, no positions, no rotary embedding, one split.
"""

from __future__ import annotations

import math

import torch

from models.attention import KVCacheState, streaming_attention_reference, substep_attention_reference
from models.kernels import HAVE_TRITON, falls_back_to, require_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl


    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, keys_ptr, values_ptr, positions_ptr, pos_ptr, out_ptr, part_ptr,
                       H, G, half, cap, context, fixed_idx, span, freq_scale, sm_scale,
                       q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, c_sb, c_sh, c_st, p_sb, pos_sb, o_sb, o_sh,
                       RING: tl.constexpr, ROPE: tl.constexpr, SPLIT: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        bh = tl.program_id(0)
        s = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # a pool of many sessions' rings can pass 2**31 elements
        h = bh % H
        hk = h // G
        i = tl.arange(0, BLOCK_D)  # pair index: rotary pairs are (2i, 2i + 1)
        mi = i < half
        d = tl.arange(0, 2 * BLOCK_D)
        md = d < 2 * half
        dt = keys_ptr.dtype.element_ty
        if RING:
            pos = tl.load(pos_ptr + b * pos_sb)
            idx = pos % cap
        else:
            pos = fixed_idx
            idx = fixed_idx
        qe = tl.load(q_ptr + b * q_sb + h * q_sh + 2 * i, mask=mi, other=0.0).to(tl.float32)
        qo = tl.load(q_ptr + b * q_sb + h * q_sh + 2 * i + 1, mask=mi, other=0.0).to(tl.float32)
        ke = tl.load(k_ptr + b * k_sb + hk * k_sh + 2 * i, mask=mi, other=0.0).to(tl.float32)
        ko = tl.load(k_ptr + b * k_sb + hk * k_sh + 2 * i + 1, mask=mi, other=0.0).to(tl.float32)
        if ROPE:
            angle = pos.to(tl.float32) * tl.exp(i.to(tl.float32) * freq_scale)
            c = tl.cos(angle)
            sn = tl.sin(angle)
            qe, qo = qe * c - qo * sn, qe * sn + qo * c
            ke, ko = ke * c - ko * sn, ke * sn + ko * c
        # Rounded as the PyTorch path rounds them (rotated q and k are cast back to the model's dtype).
        q = tl.interleave(qe, qo).to(q_ptr.dtype.element_ty).to(tl.float32) * sm_scale
        k_new = tl.interleave(ke, ko).to(dt)
        v_new = tl.load(v_ptr + b * v_sb + hk * v_sh + d, mask=md, other=0.0).to(dt)
        cache_row = b * c_sb + hk * c_sh
        if s == 0:
            if h % G == 0:
                tl.store(keys_ptr + cache_row + idx * c_st + d, k_new, mask=md)
                tl.store(values_ptr + cache_row + idx * c_st + d, v_new, mask=md)
            if RING:
                if h == 0:
                    tl.store(positions_ptr + b * p_sb + idx, pos)
            m = tl.sum(q * k_new.to(tl.float32), axis=0)  # the new key first: the running max starts finite
            l_sum = tl.full([], 1.0, tl.float32)
            acc = v_new.to(tl.float32)
        else:
            m = tl.full([], float("-inf"), tl.float32)
            l_sum = tl.full([], 0.0, tl.float32)
            acc = tl.zeros([2 * BLOCK_D], tl.float32)
        start = s * span
        stop = tl.minimum(start + span, cap)
        for j0 in range(start, stop, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            valid = (j < stop) & (j != idx)
            if RING:
                old = tl.load(positions_ptr + b * p_sb + j, mask=valid, other=-1)
                delta = pos - old
                valid = valid & (old >= 0) & (delta >= 0) & (delta < context)
            else:
                valid = valid & (j < idx)
            tile = cache_row + j[:, None] * c_st + d[None, :]
            m2 = valid[:, None] & md[None, :]
            score = tl.sum(tl.load(keys_ptr + tile, mask=m2, other=0.0).to(tl.float32) * q[None, :], axis=1)
            score = tl.where(valid, score, float("-inf"))
            m_new = tl.maximum(m, tl.max(score, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(score - m_safe)
            alpha = tl.exp(m - m_safe)
            vb = tl.load(values_ptr + tile, mask=m2, other=0.0).to(tl.float32)
            l_sum = l_sum * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * vb, axis=0)
            m = m_new
        if SPLIT:
            row = part_ptr + (bh * tl.num_programs(1) + s) * (2 * half + 2)
            tl.store(row + d, acc, mask=md)
            tl.store(row + 2 * half, m)
            tl.store(row + 2 * half + 1, l_sum)
        else:
            tl.store(out_ptr + b * o_sb + h * o_sh + d, (acc / l_sum).to(out_ptr.dtype.element_ty), mask=md)


    @triton.jit
    def _merge_kernel(part_ptr, out_ptr, offset_ptr, H, S, width, o_sb, o_sh, off_sb,
                      BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr):
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        if h == 0:  # every read of the offset was in the launch before this one
            tl.store(offset_ptr + b * off_sb, tl.load(offset_ptr + b * off_sb) + 1)
        sp = tl.arange(0, BLOCK_S)
        ms = sp < S
        base = part_ptr + bh * S * (width + 2)
        m = tl.load(base + sp * (width + 2) + width, mask=ms, other=float("-inf"))
        l_sum = tl.load(base + sp * (width + 2) + width + 1, mask=ms, other=0.0)
        top = tl.max(m, axis=0)  # finite: split 0 always holds the step's own key
        w = tl.where(ms, tl.exp(m - top), 0.0)
        d = tl.arange(0, BLOCK_W)
        md = d < width
        acc = tl.load(base + sp[:, None] * (width + 2) + d[None, :], mask=ms[:, None] & md[None, :], other=0.0)
        y = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l_sum, axis=0)
        tl.store(out_ptr + b * o_sb + h * o_sh + d, y.to(out_ptr.dtype.element_ty), mask=md)


_BLOCK_N = 64


def _num_splits(programs: int, cap: int, device: torch.device) -> int:
    """Enough splits that the step fills the GPU (~2 programs per SM), none shorter than one block."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(cap, _BLOCK_N), triton.cdiv(2 * sms, programs)))


def _launch(q, k, v, keys, values, out, *, positions=None, offset=None, fixed_idx=0, context=0,
            rope_max_period=None, splits=1):
    B, H, _, D = q.shape
    H_kv, cap = keys.shape[1], keys.shape[2]
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("one-query attention takes unit-stride rows")
    if keys.stride() != values.stride() or keys.stride(-1) != 1:
        raise ValueError("keys and values must share one layout with unit-stride rows")
    if D % 2:
        raise ValueError("head dim must be even (interleaved pairs)")
    ring = positions is not None
    span = triton.cdiv(triton.cdiv(cap, splits), _BLOCK_N) * _BLOCK_N
    splits = triton.cdiv(cap, span)
    part = torch.empty(B * H * splits * (D + 2), device=q.device, dtype=torch.float32) if ring else out
    freq_scale = -math.log(rope_max_period) * 2 / D if rope_max_period is not None else 0.0
    half = D // 2
    _decode_kernel[(B * H, splits)](
        q, k, v, keys, values, positions if ring else keys, offset if ring else keys, out, part,
        H, H // H_kv, half, cap, context, fixed_idx, span, freq_scale, 1.0 / math.sqrt(D),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2), positions.stride(0) if ring else 0,
        offset.stride(0) if ring else 0, out.stride(0), out.stride(1),
        RING=ring, ROPE=rope_max_period is not None, SPLIT=ring,
        BLOCK_N=_BLOCK_N if ring else triton.next_power_of_2(cap), BLOCK_D=triton.next_power_of_2(half))
    if ring:
        _merge_kernel[(B * H,)](part, out, offset, H, splits, D, out.stride(0), out.stride(1), offset.stride(0),
                                BLOCK_S=triton.next_power_of_2(splits), BLOCK_W=triton.next_power_of_2(D))


def _decode_reference(q, k, v, cache, context, rope_max_period, splits=None):
    return streaming_attention_reference(q, k, v, cache, context, rope_max_period)


@falls_back_to("decode_attention", _decode_reference)
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCacheState, context: int,
                     rope_max_period: float | None, splits: int | None = None) -> torch.Tensor:
    """One step of sliding-window attention over the ring at each row's `cache.offset`: q [B, H, 1, D], k/v
    [B, H_kv, 1, D] (not yet rotated) -> [B, H, 1, D] (a view of [B, 1, H, D] memory, ready for the output
    projection). Writes the rotated key, the value and the position into the ring and advances the offset by
    one, in two launches. `splits` overrides how many pieces the ring is read in (tests)."""
    require_triton("the PyTorch path of models.attention")
    B, H, T, D = q.shape
    if T != 1:
        raise ValueError("decode_attention takes one step")
    out = torch.empty(B, 1, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    if splits is None:
        splits = _num_splits(B * H, cache.capacity, q.device)
    _launch(q, k, v, cache.keys, cache.values, out, positions=cache.positions, offset=cache.offset,
            context=context, rope_max_period=rope_max_period, splits=splits)
    return out


@falls_back_to("substep_attention", substep_attention_reference)
def substep_attention(q: torch.Tensor, new_kv: torch.Tensor, kv: torch.Tensor, step: int) -> torch.Tensor:
    """The depformer's sub-step `step`: q [B, H, 1, D]; new_kv [B, 1, 2, H_kv, D] this sub-step's key and value as
    projected; kv [B, 2, H_kv, steps, D] holds the keys and values of sub-steps 0..step-1 of this frame; this
    one's are written at index `step`. -> [B, H, 1, D] (a view of [B, 1, H, D] memory). The reference is
    `models.attention.substep_attention_reference`."""
    require_triton("models.attention.substep_attention_reference")
    B, H, _, D = q.shape
    out = torch.empty(B, 1, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    k, v = new_kv[:, :, 0].transpose(1, 2), new_kv[:, :, 1].transpose(1, 2)
    _launch(q, k, v, kv[:, 0], kv[:, 1], out, fixed_idx=step)
    return out
