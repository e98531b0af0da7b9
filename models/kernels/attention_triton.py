"""One launch per attention layer and frame for the ring KV cache: append k/v/position and build the mask.

The PyTorch path (`models.attention._attend_chunk`) spends ~9 launches per layer on this at T = 1 (index,
three scatters, five mask ops). Here program (b, h < H) copies row b's head h into the ring at
`offset % capacity`, and program (b, H) writes the position and the additive attention mask from the
positions as they were: the overwritten entry is always in the window (delta 0), every other entry keeps
its own test, so no ordering between the programs' reads and writes matters.
"""

from __future__ import annotations

import torch

from models.attention import KVCacheState
from models.kernels import HAVE_TRITON, require_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl


    @triton.jit
    def _append_kernel(k_ptr, v_ptr, keys_ptr, values_ptr, positions_ptr, pos_ptr, mask_ptr,
                       H, D, cap, context, k_sb, k_sh, v_sb, v_sh, c_sb, c_sh, c_st, p_sb, q_sb,
                       BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        pos = tl.load(pos_ptr + b * q_sb)
        idx = pos % cap
        if h < H:
            d = tl.arange(0, BLOCK_D)
            m = d < D
            dst = b * c_sb + h * c_sh + idx * c_st + d
            tl.store(keys_ptr + dst, tl.load(k_ptr + b * k_sb + h * k_sh + d, mask=m), mask=m)
            tl.store(values_ptr + dst, tl.load(v_ptr + b * v_sb + h * v_sh + d, mask=m), mask=m)
        else:
            for start in range(0, cap, BLOCK_C):
                j = start + tl.arange(0, BLOCK_C)
                mj = j < cap
                old = tl.load(positions_ptr + b * p_sb + j, mask=mj, other=-1)
                delta = pos - old
                valid = ((old >= 0) & (delta >= 0) & (delta < context)) | (j == idx)
                bias = tl.where(valid, 0.0, float("-inf"))
                tl.store(mask_ptr + b * cap + j, bias.to(mask_ptr.dtype.element_ty), mask=mj)
            tl.store(positions_ptr + b * p_sb + idx, pos)


def append_kv_and_mask(k: torch.Tensor, v: torch.Tensor, cache: KVCacheState, context: int,
                       pos_q: torch.Tensor) -> torch.Tensor:
    """k, v [B, H_kv, 1, D] at positions pos_q [B, 1] -> additive attention mask [B, 1, 1, capacity] (0 where
    visible, -inf elsewhere, in k's dtype: what SDPA would otherwise convert a boolean mask into, in two more
    launches); updates the cache (keys, values, positions; the caller advances the offset, as on the PyTorch
    path). Positions come from the caller, not the offset: a chunk loop writes steps before the offset moves."""
    require_triton("the PyTorch path of models.attention")
    B, H, T, D = k.shape
    if T != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("append_kv_and_mask takes one step with unit-stride rows")
    keys, values, positions = cache.keys, cache.values, cache.positions
    cap = keys.shape[2]
    mask = torch.empty(B, 1, 1, cap, dtype=k.dtype, device=k.device)
    _append_kernel[(B, H + 1)](k, v, keys, values, positions, pos_q, mask, H, D, cap, context,
                               k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                               keys.stride(0), keys.stride(1), keys.stride(2), positions.stride(0), pos_q.stride(0),
                               BLOCK_D=triton.next_power_of_2(D), BLOCK_C=min(1024, triton.next_power_of_2(cap)))
    return mask
