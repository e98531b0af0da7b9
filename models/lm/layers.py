"""Building blocks of the LM: fp32 RMSNorm, SiLU-gated MLP, embeddings with a 'no input' id, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import KVCacheState, streaming_attention, substep_attention_reference
from models.kernels import fused_ok
from models.kernels.gemv_triton import gated_linear, norm_linear
from models.kernels.mamba2_ref import rmsnorm_ref, silu_gate_ref
from models.kernels.mamba2_triton import add_rmsnorm, rmsnorm, silu_gate


class RMSNorm(nn.Module):
    """y = x * alpha / sqrt(eps + mean(x^2)), computed in float32 (Moshi's `rms_norm_f32`)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_ok(x):  # one launch instead of ~8
            return rmsnorm(x, self.alpha, self.eps)
        return self.reference(x)

    def add_then_norm(self, x: torch.Tensor, update: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + update, norm(x + update)) in one fused launch; `update` None: (x, norm(x)). For the GPU path, where
        each residual add is carried to the norm after it."""
        if update is None:
            return x, self(x)
        return add_rmsnorm(x, update, self.alpha, self.eps)

    def add_norm_linear(self, x: torch.Tensor, update: torch.Tensor | None,
                        weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + update, norm(x + update) @ weight.T): `add_then_norm` and the projection after it, in one launch
        for one row when that is faster on this GPU (models.kernels.gemv_triton.choose)."""

        def separate(x: torch.Tensor, update: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            x, h = self.add_then_norm(x, update)
            return x, F.linear(h, weight)

        return norm_linear(x, update, self.alpha, self.eps, weight, separate)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch path (CPU, training, and the oracle of the fused kernel)."""
        return rmsnorm_ref(x, self.alpha, self.eps)


class SiluGating(nn.Module):
    """linear_out(silu(a) * b) with [a; b] = linear_in(x); hidden = 2/3 of dim_feedforward as in Moshi."""

    def __init__(self, dim: int, dim_feedforward: int):
        super().__init__()
        hidden = 21 * dim // 8 if dim_feedforward == 4 * dim else 2 * dim_feedforward // 3
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_in(x)
        if fused_ok(h):
            return self._gated_out(h)
        return self.linear_out(self.gate(h))

    def _gated_out(self, h: torch.Tensor) -> torch.Tensor:
        """GPU path: gating and output projection (one launch for one row when that is faster)."""
        return gated_linear(h, self.linear_out.weight, lambda h: self.linear_out(silu_gate(h)))

    def after_norm(self, x: torch.Tensor, update: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """GPU path: (x + update, self(norm(x + update))), the residual add and the norm folded into this MLP's
        projections where that is faster."""
        x, h = norm.add_norm_linear(x, update, self.linear_in.weight)
        return x, self._gated_out(h)

    @staticmethod
    def gate(h: torch.Tensor) -> torch.Tensor:
        """The PyTorch gating (CPU, training, and the fused kernel's oracle)."""
        return silu_gate_ref(h)


class Embedding(nn.Embedding):
    """Token -1 means 'no input' and embeds to exactly zero."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y = super().forward(tokens.clamp(min=0))
        return torch.where((tokens == -1)[..., None], torch.zeros((), dtype=y.dtype, device=y.device), y)


class Attention(nn.Module):
    """Causal self-attention with fused q|k|v rows (`in_proj_weight`), optional GQA and per-step weights.

    With `steps > 1` (the depformer) the weights are stacked step-major, exactly as in Moshi's file:
    rows [k*qkv:(k+1)*qkv] of in_proj_weight belong to depformer sub-step k.
    """

    def __init__(self, dim: int, num_heads: int, kv_heads: int | None = None, steps: int = 1):
        super().__init__()
        self.num_heads, self.kv_heads = num_heads, kv_heads or num_heads
        self.head_dim = dim // num_heads
        self.steps = steps
        qkv = (self.num_heads + 2 * self.kv_heads) * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(steps * qkv, dim))
        self.out_proj = nn.Linear(dim, steps * dim, bias=False)  # weight [steps*dim, dim]
        nn.init.normal_(self.in_proj_weight, std=dim**-0.5)

    def _qkv(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """[B, T, C] -> fused [B, T, (H + 2 H_kv) * D] with sub-step `step`'s weights."""
        return F.linear(x, self.in_weight(step))

    def _output(self, y: torch.Tensor, step: int) -> torch.Tensor:
        """Attention output [B, H, T, D] -> [B, T, C] through sub-step `step`'s output projection."""
        B, H, T, D = y.shape
        w = self.out_proj.weight.view(self.steps, H * D, -1)[step]
        return F.linear(y.transpose(1, 2).reshape(B, T, -1), w)

    def project(self, x: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._split(self._qkv(x, step))

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = qkv.shape
        q_dim, kv_dim = self.num_heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def in_weight(self, step: int = 0) -> torch.Tensor:
        """Sub-step `step`'s q|k|v projection weight [(H + 2 H_kv) * D, C]."""
        return self.in_proj_weight.view(self.steps, -1, self.in_proj_weight.shape[-1])[step]

    def forward(self, x: torch.Tensor, cache: KVCacheState, context: int, max_period: float | None,
                step: int = 0) -> torch.Tensor:
        return self.forward_qkv(self._qkv(x, step), cache, context, max_period, step)

    def forward_qkv(self, qkv: torch.Tensor, cache: KVCacheState, context: int, max_period: float | None,
                    step: int = 0) -> torch.Tensor:
        """`forward` from the projected q|k|v [B, T, (H + 2 H_kv) * D] (the GPU path projects with the norm)."""
        q, k, v = self._split(qkv)
        return self._output(streaming_attention(q, k, v, cache, context, max_period), step)

    def forward_substep(self, x: torch.Tensor, kv: torch.Tensor, step: int) -> torch.Tensor:
        """Depformer sub-step `step` (x [B, 1, C]): kv [B, 2, H, steps, D] holds the keys and values of sub-steps
        0..step-1 of this frame at their own index; this one's go to index `step`. The index is a Python int, so
        there are no positions, scatters or masks; on a GPU the write and the attention are one launch (they add
        up over dep_q x layers)."""
        return self.substep_qkv(self._qkv(x, step), kv, step)

    def substep_qkv(self, qkv: torch.Tensor, kv: torch.Tensor, step: int) -> torch.Tensor:
        """`forward_substep` from the projected q|k|v (the GPU path projects with the norm)."""
        B, T, _ = qkv.shape
        q_dim = self.num_heads * self.head_dim
        q = qkv[..., :q_dim].view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        new_kv = qkv[..., q_dim:].view(B, T, 2, self.kv_heads, self.head_dim)
        attend = substep_attention_reference
        if fused_ok(qkv):  # one launch: write this sub-step's key/value, attend
            from models.kernels.attention_triton import substep_attention as attend
        return self._output(attend(q, new_kv, kv, step), step)

    def init_cache(self, batch: int, context: int, device, dtype, chunk: int = 1) -> KVCacheState:
        return KVCacheState.create(batch, self.kv_heads, self.head_dim, context, chunk, device, dtype)
