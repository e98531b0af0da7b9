"""Interleaved rotary embedding in one Triton launch (the PyTorch reference is `models.attention.rope_rotate`).

The reference spends ~16 small launches per call (frequencies, angles, cos/sin, casts, the rotation, the
stack); at batch 1 on a GPU the frame step is launch-bound, and a 32-layer backbone calls it 64 times a frame.
One program per (batch, head, step) row computes its angles in float32 and rotates the row's pairs.
"""

from __future__ import annotations

import math

import torch

from models.attention import rope_rotate
from models.kernels import HAVE_TRITON, falls_back_to, require_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl


    @triton.jit
    def _rope_kernel(x_ptr, pos_ptr, out_ptr, H, T, half, stride_b, stride_h, stride_t, freq_scale,
                     BLOCK: tl.constexpr):
        row = tl.program_id(0)
        t = row % T
        h = (row // T) % H
        b = row // (T * H)
        i = tl.arange(0, BLOCK)
        m = i < half
        src = x_ptr + b * stride_b + h * stride_h + t * stride_t + 2 * i
        xr = tl.load(src, mask=m, other=0.0).to(tl.float32)
        xi = tl.load(src + 1, mask=m, other=0.0).to(tl.float32)
        pos = tl.load(pos_ptr + b * T + t).to(tl.float32)
        angle = pos * tl.exp(i.to(tl.float32) * freq_scale)
        c, s = tl.cos(angle), tl.sin(angle)
        dst = out_ptr + row * 2 * half + 2 * i
        tl.store(dst, (xr * c - xi * s).to(out_ptr.dtype.element_ty), mask=m)
        tl.store(dst + 1, (xr * s + xi * c).to(out_ptr.dtype.element_ty), mask=m)


@falls_back_to("rope", rope_rotate)
def rope_fused(x: torch.Tensor, positions: torch.Tensor, max_period: float = 10_000.0) -> torch.Tensor:
    """x [B, H, T, D] (any strides, last one 1), positions [B, T] -> rotated copy [B, H, T, D], contiguous."""
    require_triton("models.attention.rope_rotate")
    B, H, T, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(B, H, T, D, device=x.device, dtype=x.dtype)
    pos = positions.contiguous()
    _rope_kernel[(B * H * T,)](x, pos, out, H, T, D // 2, x.stride(0), x.stride(1), x.stride(2),
                               -math.log(max_period) * 2 / D, BLOCK=triton.next_power_of_2(D // 2))
    return out
