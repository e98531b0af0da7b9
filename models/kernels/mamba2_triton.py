"""Fused Triton kernels for the per-frame Mamba2 step, over a persistent pool of session slots.

Three launches per layer replace ~20 small PyTorch ops:
  1. `conv_step`:  depthwise causal conv update (state shift + dot + bias + SiLU), one program per
                   (row, channel block); every channel is owned by exactly one program, so the in-place
                   state update is race-free.
  2. `ssm_step`:   dt softplus, exp(dt*A) decay, state update in fp32, C-contraction and D skip, one program
                   per (row, head, headdim block).
  3. `gated_rmsnorm`: RMSNorm(y * silu(z)) * w per norm group.
Rows map to pool slots through `slots` (int32); a negative slot marks a padding row (CUDA-graph buckets):
its outputs are zero and no state is touched. The pure-PyTorch oracle is `mamba2_ref.py`; tests also run
these kernels on CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

from models.kernels import HAVE_TRITON, falls_back_to, require_triton
from models.kernels.mamba2_ref import add_rmsnorm_ref, rmsnorm_ref, silu_gate_ref

if HAVE_TRITON:
    import triton
    import triton.language as tl


    @triton.jit
    def _conv_step_kernel(xbc_ptr, state_ptr, w_ptr, b_ptr, out_ptr, slots_ptr, C,
                          W: tl.constexpr, BLOCK_C: tl.constexpr):
        row = tl.program_id(0)
        cblock = tl.program_id(1)
        slot = tl.load(slots_ptr + row)
        c = cblock * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        if slot < 0:
            tl.store(out_ptr + row * C + c, tl.zeros([BLOCK_C], dtype=tl.float32), mask=cmask)
            return
        x_new = tl.load(xbc_ptr + row * C + c, mask=cmask, other=0.0).to(tl.float32)
        acc = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        base = state_ptr + slot.to(tl.int64) * C * (W - 1) + c * (W - 1)
        prev = tl.load(base, mask=cmask, other=0.0).to(tl.float32)  # oldest
        for k in tl.static_range(W - 1):
            wk = tl.load(w_ptr + c * W + k, mask=cmask, other=0.0).to(tl.float32)
            acc += wk * prev
            if k < W - 2:
                nxt = tl.load(base + k + 1, mask=cmask, other=0.0).to(tl.float32)
                tl.store(base + k, nxt.to(state_ptr.dtype.element_ty), mask=cmask)
                prev = nxt
        w_last = tl.load(w_ptr + c * W + (W - 1), mask=cmask, other=0.0).to(tl.float32)
        acc += w_last * x_new
        tl.store(base + (W - 2), x_new.to(state_ptr.dtype.element_ty), mask=cmask)
        y = acc / (1.0 + tl.exp(-acc))
        tl.store(out_ptr + row * C + c, y.to(out_ptr.dtype.element_ty), mask=cmask)

    @triton.jit
    def _ssm_step_kernel(xbc_ptr, dt_ptr, dt_bias_ptr, A_log_ptr, D_ptr, state_ptr, y_ptr, slots_ptr,
                         conv_dim, d_inner, H, G,
                         P: tl.constexpr, N: tl.constexpr, BLOCK_P: tl.constexpr):
        row = tl.program_id(0)
        h = tl.program_id(1)
        pblock = tl.program_id(2)
        slot = tl.load(slots_ptr + row)
        p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < P
        if slot < 0:
            tl.store(y_ptr + row * d_inner + h * P + p, tl.zeros([BLOCK_P], dtype=tl.float32), mask=pmask)
            return
        n = tl.arange(0, N)
        g = h // (H // G)
        x = tl.load(xbc_ptr + row * conv_dim + h * P + p, mask=pmask, other=0.0).to(tl.float32)
        Bv = tl.load(xbc_ptr + row * conv_dim + d_inner + g * N + n).to(tl.float32)
        Cv = tl.load(xbc_ptr + row * conv_dim + d_inner + G * N + g * N + n).to(tl.float32)
        dt = tl.load(dt_ptr + row * H + h).to(tl.float32) + tl.load(dt_bias_ptr + h).to(tl.float32)
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        A = -tl.exp(tl.load(A_log_ptr + h).to(tl.float32))
        decay = tl.exp(dt * A)
        sbase = state_ptr + ((slot.to(tl.int64) * H + h) * P) * N
        offs = p[:, None] * N + n[None, :]
        s = tl.load(sbase + offs, mask=pmask[:, None], other=0.0)
        s = s * decay + (dt * x)[:, None] * Bv[None, :]
        tl.store(sbase + offs, s, mask=pmask[:, None])
        y = tl.sum(s * Cv[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
        tl.store(y_ptr + row * d_inner + h * P + p, y.to(y_ptr.dtype.element_ty), mask=pmask)

    @triton.jit
    def _gated_rmsnorm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, row_stride_z, D_group, eps,
                              BLOCK: tl.constexpr):
        row = tl.program_id(0)
        grp = tl.program_id(1)
        total = tl.num_programs(1) * D_group
        offs = tl.arange(0, BLOCK)
        ssq = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D_group, BLOCK):
            c = grp * D_group + start + offs
            m = (start + offs) < D_group
            y = tl.load(y_ptr + row * total + c, mask=m, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + row * row_stride_z + c, mask=m, other=0.0).to(tl.float32)
            h = y * (z / (1.0 + tl.exp(-z)))
            ssq += h * h
        rstd = 1.0 / tl.sqrt(tl.sum(ssq, axis=0) / D_group + eps)
        for start in range(0, D_group, BLOCK):
            c = grp * D_group + start + offs
            m = (start + offs) < D_group
            y = tl.load(y_ptr + row * total + c, mask=m, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + row * row_stride_z + c, mask=m, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
            h = y * (z / (1.0 + tl.exp(-z))) * rstd * w
            tl.store(out_ptr + row * total + c, h.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rmsnorm_kernel(x_ptr, alpha_ptr, out_ptr, D, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ssq = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            m = (start + offs) < D
            x = tl.load(x_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32)
            ssq += x * x
        rstd = 1.0 / tl.sqrt(eps + tl.sum(ssq, axis=0) / D)
        for start in range(0, D, BLOCK):
            m = (start + offs) < D
            x = tl.load(x_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32)
            a = tl.load(alpha_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * D + start + offs, (x * a * rstd).to(out_ptr.dtype.element_ty), mask=m)


    @triton.jit
    def _add_rmsnorm_kernel(x_ptr, u_ptr, alpha_ptr, sum_ptr, out_ptr, D, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ssq = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            m = (start + offs) < D
            s = (tl.load(x_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32)
                 + tl.load(u_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32))
            s = s.to(sum_ptr.dtype.element_ty)  # rounded as the separate add rounds it
            tl.store(sum_ptr + row * D + start + offs, s, mask=m)
            sf = s.to(tl.float32)
            ssq += sf * sf
        rstd = 1.0 / tl.sqrt(eps + tl.sum(ssq, axis=0) / D)
        for start in range(0, D, BLOCK):  # recompute the sum: no read-back of what other threads stored
            m = (start + offs) < D
            s = (tl.load(x_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32)
                 + tl.load(u_ptr + row * D + start + offs, mask=m, other=0.0).to(tl.float32))
            s = s.to(sum_ptr.dtype.element_ty)
            a = tl.load(alpha_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * D + start + offs, (s.to(tl.float32) * a * rstd).to(out_ptr.dtype.element_ty),
                     mask=m)

    @triton.jit
    def _silu_gate_kernel(h_ptr, out_ptr, hidden, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = c < hidden
        gate = tl.load(h_ptr + row * 2 * hidden + c, mask=m, other=0.0).to(tl.float32)
        up = tl.load(h_ptr + row * 2 * hidden + hidden + c, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * hidden + c, (gate / (1.0 + tl.exp(-gate)) * up).to(out_ptr.dtype.element_ty),
                 mask=m)


def conv_step(xbc: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              slots: torch.Tensor) -> torch.Tensor:
    """xbc [b, C] raw inputs; conv_state [S, C, W-1] pool (updated in place); weight [C, W] -> silu(conv) [b, C]."""
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    b, C = xbc.shape
    W = weight.shape[-1]
    out = torch.empty_like(xbc)
    block = min(1024, triton.next_power_of_2(C))
    _conv_step_kernel[(b, triton.cdiv(C, block))](xbc.contiguous(), conv_state, weight.contiguous(), bias, out,
                                                 slots, C, W=W, BLOCK_C=block)
    return out


def ssm_step(xbc: torch.Tensor, dt: torch.Tensor, dt_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
             ssm_state: torch.Tensor, slots: torch.Tensor, ngroups: int) -> torch.Tensor:
    """xbc [b, conv_dim] (post-conv [x|B|C]), dt [b, H] raw; ssm_state [S, H, P, N] fp32 pool -> y [b, H*P]."""
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    b, conv_dim = xbc.shape
    _, H, P, N = ssm_state.shape
    d_inner = H * P
    y = torch.empty(b, d_inner, device=xbc.device, dtype=xbc.dtype)
    block_p = min(P, 16)
    _ssm_step_kernel[(b, H, triton.cdiv(P, block_p))](xbc.contiguous(), dt.contiguous(), dt_bias, A_log, D,
                                                     ssm_state, y, slots, conv_dim, d_inner, H, ngroups,
                                                     P=P, N=N, BLOCK_P=block_p)
    return y


def gated_rmsnorm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int,
                  eps: float = 1e-5) -> torch.Tensor:
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    b, d = y.shape
    out = torch.empty_like(y)
    group = d // groups
    _gated_rmsnorm_kernel[(b, groups)](y.contiguous(), z, weight, out, z.stride(0), group, eps,
                                       BLOCK=min(1024, triton.next_power_of_2(group)))
    return out


@falls_back_to("rmsnorm", rmsnorm_ref)
def rmsnorm(x: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Moshi's fp32 RMSNorm on rows of x [..., D]."""
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    out = torch.empty_like(x2)
    _rmsnorm_kernel[(x2.shape[0],)](x2, alpha.reshape(-1).contiguous(), out, shape[-1], eps,
                                    BLOCK=min(1024, triton.next_power_of_2(shape[-1])))
    return out.view(shape)


@falls_back_to("add_rmsnorm", add_rmsnorm_ref)
def add_rmsnorm(x: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor,
                eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next RMSNorm in one launch: (s, rmsnorm(s)) with s = x + u rounded to x's dtype
    (as the separate ops round it)."""
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    shape = x.shape
    x2, u2 = x.reshape(-1, shape[-1]).contiguous(), u.reshape(-1, shape[-1]).contiguous()
    total, out = torch.empty_like(x2), torch.empty_like(x2)
    _add_rmsnorm_kernel[(x2.shape[0],)](x2, u2, alpha.reshape(-1).contiguous(), total, out, shape[-1], eps,
                                        BLOCK=min(1024, triton.next_power_of_2(shape[-1])))
    return total.view(shape), out.view(shape)


@falls_back_to("silu_gate", silu_gate_ref)
def silu_gate(h: torch.Tensor) -> torch.Tensor:
    """silu(a) * b for h = [a | b] on the last dim, in one launch (the MLP's gating; reference in SiluGating)."""
    require_triton("the PyTorch path (models/kernels/mamba2_ref.py)")
    shape = h.shape
    hidden = shape[-1] // 2
    h2 = h.reshape(-1, shape[-1]).contiguous()
    out = torch.empty(h2.shape[0], hidden, device=h.device, dtype=h.dtype)
    block = min(1024, triton.next_power_of_2(hidden))
    _silu_gate_kernel[(h2.shape[0], triton.cdiv(hidden, block))](h2, out, hidden, BLOCK=block)
    return out.view(*shape[:-1], hidden)


def mamba2_step_fused(mixer, u: torch.Tensor, conv_pool: torch.Tensor, ssm_pool: torch.Tensor,
                      slots: torch.Tensor) -> torch.Tensor:
    """One Mamba2 mixer step for rows u [b, dim] over state pools indexed by `slots` -> [b, dim]."""
    (z, xbc, dt), _ = mixer._split(torch.nn.functional.linear(u, mixer.in_proj.weight))
    xbc = conv_step(xbc, conv_pool, mixer.conv1d.weight[:, 0], mixer.conv1d.bias, slots)
    y = ssm_step(xbc, dt, mixer.dt_bias, mixer.A_log, mixer.D, ssm_pool, slots, mixer.cfg.ngroups)
    y = gated_rmsnorm(y, z, mixer.norm.weight, mixer.cfg.ngroups)
    return torch.nn.functional.linear(y, mixer.out_proj.weight)
