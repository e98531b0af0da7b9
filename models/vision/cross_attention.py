"""MoshiVis-style gated cross-attention from the LM's hidden states to cached image tokens.

Parameter names follow kyutai's MoshiVis checkpoints: per layer `cross_attention.mha.in_proj_weight_q`,
`cross_attention.mha.in_proj_weight_kv` (or a fused `in_proj_weight` when the image width equals the LM
width), `cross_attention.mha.out_proj.weight`, `cross_attention.gate.alpha.{0,2}.weight` and `norm_cross`.
The projection is shared across layers; gates are per layer and conditional (a small MLP on the hidden
state, sigmoid shifted by -4 so a fresh gate starts nearly closed).

Image keys/values are projected once per new image (`project_kv`) and kept per session slot in
`VisionState`, so a frame step costs one small attention over N cached tokens, whatever the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.state import StreamState


@dataclass
class VisionState(StreamState):
    keys: torch.Tensor  # [B, H, N, Dh] projected image keys per slot
    values: torch.Tensor  # [B, H, N, Dh]
    present: torch.Tensor  # [B] bool: the slot has an image (else cross-attention adds nothing)
    gate: torch.Tensor  # [B] float32: mean gate of the last step (how much the output drew on the image)


class SharedCrossAttention(nn.Module):
    def __init__(self, dim: int, xa_dim: int, heads: int):
        super().__init__()
        self.dim, self.heads, self.fused = dim, heads, xa_dim == dim
        if self.fused:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            self.in_proj_weight_q = nn.Parameter(torch.empty(dim, dim))
            self.in_proj_weight_kv = nn.Parameter(torch.empty(2 * dim, xa_dim))
            nn.init.xavier_uniform_(self.in_proj_weight_q)
            nn.init.xavier_uniform_(self.in_proj_weight_kv)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def _wq(self) -> torch.Tensor:
        return self.in_proj_weight[: self.dim] if self.fused else self.in_proj_weight_q

    def _wkv(self) -> torch.Tensor:
        return self.in_proj_weight[self.dim:] if self.fused else self.in_proj_weight_kv

    def project_kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens [B, N, xa_dim] -> keys, values [B, H, N, Dh] (once per image)."""
        B, N, _ = tokens.shape
        kv = F.linear(tokens, self._wkv()).view(B, N, 2, self.heads, self.dim // self.heads)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = F.linear(x, self._wq()).view(B, T, self.heads, D // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype))
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class XAGate(nn.Module):
    """Per-channel gate in (0, 1) computed from the cross-attention output itself (MoshiVis' conditional gate)."""

    def __init__(self, dim: int, hidden_factor: float = 0.125):
        super().__init__()
        hidden = max(1, int(dim * hidden_factor))
        self.alpha = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.alpha(x) - 4)
        return x * g, g


class GatedCrossAttention(nn.Module):
    def __init__(self, shared: SharedCrossAttention, dim: int):
        super().__init__()
        self.mha = shared  # the same module in every layer: its parameters are shared
        self.gate = XAGate(dim)

    def forward(self, x: torch.Tensor, vision: VisionState) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] (normed) -> (update [B, T, D], mean gate per slot [B]); zero where no image."""
        y, g = self.gate(self.mha(x, vision.keys, vision.values))
        present = vision.present.view(-1, 1, 1)
        y = torch.where(present, y, torch.zeros_like(y))
        gate = torch.where(vision.present, g.float().mean(dim=(1, 2)), torch.zeros_like(vision.gate))
        return y, gate


def cross_attention_reference(x, image_tokens, wq, wkv, wo, gate_w1, gate_w2, heads: int) -> torch.Tensor:
    """Straightforward per-head loop of the same math, for tests."""
    B, T, D = x.shape
    dh = D // heads
    k_all = image_tokens @ wkv[:D].t()
    v_all = image_tokens @ wkv[D:].t()
    q_all = x @ wq.t()
    out = torch.zeros_like(x)
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        att = torch.softmax(q_all[..., sl] @ k_all[..., sl].transpose(1, 2) / dh**0.5, dim=-1)
        out[..., sl] = att @ v_all[..., sl]
    y = out @ wo.t()
    g = torch.sigmoid(torch.relu(y @ gate_w1.t()) @ gate_w2.t() - 4)
    return y * g
