"""Pure-PyTorch Mamba2 (SSD) reference: chunked scan for prefill and the single-step recurrence.

Per head h (group g = h // (H/G)), with dt already softplus'ed and A = -exp(A_log):
    state <- exp(dt*A) * state + dt * x ⊗ B_g          (state: [P, N])
    y      = state · C_g + D * x
The chunked form computes the same thing with matrix products inside chunks and a short scan across them.
These are the oracles for the fused kernels in `mamba2_triton.py`.
"""

from __future__ import annotations

import torch


def _expand_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N] (group g serves heads g*H/G .. (g+1)*H/G - 1)."""
    return t.repeat_interleave(heads // t.shape[-2], dim=-2)


def ssm_step_ref(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """One recurrence step, in place on `state` [b, H, P, N]. x [b, H, P], dt [b, H], B/C [b, G, N]."""
    H = x.shape[1]
    dtype = state.dtype
    Bh, Ch = _expand_groups(B, H).to(dtype), _expand_groups(C, H).to(dtype)
    dt = dt.to(dtype)
    decay = torch.exp(dt * A.to(dtype))[:, :, None, None]
    state.mul_(decay).add_((dt[:, :, None] * x.to(dtype))[..., None] * Bh[:, :, None, :])
    y = (state * Ch[:, :, None, :]).sum(-1) + D.to(dtype)[None, :, None] * x.to(dtype)
    return y.to(x.dtype)


def ssd_chunked_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor, chunk: int, initial_state: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan. x [b, L, H, P], dt [b, L, H], A [H], B/C [b, L, G, N], D [H].

    Returns (y [b, L, H, P], final_state [b, H, P, N]); computed in the dtype of x (use float64 as oracle).
    """
    b, L, H, P = x.shape
    N = B.shape[-1]
    dtype = x.dtype
    pad = (-L) % chunk
    if pad:  # dt = 0 on padded steps: no decay, no input -> state unchanged
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        dt = torch.nn.functional.pad(dt, (0, 0, 0, pad))
        B = torch.nn.functional.pad(B, (0, 0, 0, 0, 0, pad))
        C = torch.nn.functional.pad(C, (0, 0, 0, 0, 0, pad))
    n = x.shape[1] // chunk
    xc = x.view(b, n, chunk, H, P)
    dtc = dt.to(dtype).view(b, n, chunk, H)
    Bc = _expand_groups(B.to(dtype), H).view(b, n, chunk, H, N)
    Cc = _expand_groups(C.to(dtype), H).view(b, n, chunk, H, N)
    dA = dtc * A.to(dtype)  # [b, n, l, H]
    cum = torch.cumsum(dA, dim=2)
    # Intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j
    seg = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # [b, n, i, j, H]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    scores = torch.einsum("bnihs,bnjhs->bnijh", Cc, Bc) * decay * dtc[:, :, None, :, :]
    y = torch.einsum("bnijh,bnjhp->bnihp", scores, xc)
    # Per-chunk end states (from zero), then a scan across chunks.
    to_end = torch.exp(cum[:, :, -1:, :] - cum) * dtc  # [b, n, l, H]
    chunk_states = torch.einsum("bnlh,bnlhp,bnlhs->bnhps", to_end, xc, Bc)
    state = (torch.zeros(b, H, P, N, dtype=dtype, device=x.device) if initial_state is None
             else initial_state.to(dtype))
    entering = []
    chunk_decay = torch.exp(cum[:, :, -1, :])  # [b, n, H]
    for c in range(n):
        entering.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    entering_t = torch.stack(entering, dim=1)  # [b, n, H, P, N]
    y = y + torch.einsum("bnlhs,bnhps,bnlh->bnlhp", Cc, entering_t, torch.exp(cum))
    y = y + D.to(dtype)[None, None, None, :, None] * xc
    return y.reshape(b, n * chunk, H, P)[:, :L], state


def gated_rmsnorm_ref(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int,
                      eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm(y * silu(z)) over groups of d_inner/groups channels, times weight (norm_before_gate=False)."""
    dtype = y.dtype
    ct = torch.promote_types(y.dtype, torch.float32)
    h = y.to(ct) * torch.nn.functional.silu(z.to(ct))
    shape = h.shape
    h = h.view(*shape[:-1], groups, shape[-1] // groups)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h.view(shape) * weight.to(ct)).to(dtype)


def rmsnorm_ref(x: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Moshi's RMSNorm in float32, cast back to x's dtype."""
    xf = x.float()
    var = eps + xf.pow(2).mean(-1, keepdim=True)
    return (xf * (alpha.float() * torch.rsqrt(var))).to(x.dtype)


def add_rmsnorm_ref(x: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor,
                    eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + u
    return s, rmsnorm_ref(s, alpha, eps)


def silu_gate_ref(h: torch.Tensor) -> torch.Tensor:
    """silu(a) * b for h = [a | b] on the last dim (the MLP's gating)."""
    gate, up = h.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
