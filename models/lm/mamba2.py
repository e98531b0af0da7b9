"""Mamba2 mixer with an explicit per-session state (conv window + SSM state, constant in time)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.kernels import fused_ok, mamba2_ref, mamba2_triton
from models.lm.config import MambaConfig
from models.state import StreamState


@dataclass
class MambaState(StreamState):
    conv: torch.Tensor  # [B, conv_dim, d_conv - 1] last raw (pre-conv) inputs
    ssm: torch.Tensor  # [B, H, P, N] float32


class Mamba2Mixer(nn.Module):
    """Parameter names follow state-spaces/mamba (`in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm`, `out_proj`)."""

    def __init__(self, dim: int, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.d_inner = cfg.expand * dim
        self.nheads = self.d_inner // cfg.headdim
        if self.d_inner % cfg.headdim or self.nheads % cfg.ngroups:
            raise ValueError("expand*dim must be divisible by headdim, and heads by ngroups")
        gn = cfg.ngroups * cfg.d_state
        self.conv_dim = self.d_inner + 2 * gn
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * gn + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.use_fused = True  # fused Triton step on CUDA when available; False forces the reference path

    def init_state(self, batch: int, device=None, dtype=None) -> MambaState:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return MambaState(
            conv=torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.nheads, self.cfg.headdim, self.cfg.d_state, device=device,
                            dtype=torch.float32),
        )

    def _split(self, zxbcdt: torch.Tensor):
        gn = self.cfg.ngroups * self.cfg.d_state
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1), gn

    def forward(self, u: torch.Tensor, state: MambaState) -> torch.Tensor:
        """u: [B, T, dim]. T == 1 uses the recurrent step, T > 1 the chunked scan; both advance `state`."""
        Bsz, T, _ = u.shape
        if T == 1 and self.use_fused and fused_ok(u):
            slots = torch.arange(Bsz, dtype=torch.int32, device=u.device)
            return mamba2_triton.mamba2_step_fused(self, u[:, 0], state.conv, state.ssm, slots)[:, None]
        (z, xbc, dt), gn = self._split(self.in_proj(u))
        # Causal depthwise conv over [previous raw inputs | new inputs], then SiLU.
        window = torch.cat([state.conv, xbc.transpose(1, 2)], dim=-1)
        state.conv.copy_(window[..., -state.conv.shape[-1]:])
        xbc = F.silu(F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        x, Bm, Cm = xbc.split([self.d_inner, gn, gn], dim=-1)
        H, P, G, N = self.nheads, self.cfg.headdim, self.cfg.ngroups, self.cfg.d_state
        ct = torch.promote_types(u.dtype, torch.float32)  # SSM math in >= fp32 (fp64 for oracle tests)
        dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))
        A = -torch.exp(self.A_log.to(ct))
        if T == 1:
            y = mamba2_ref.ssm_step_ref(state.ssm, x.view(Bsz, H, P), dt.view(Bsz, H), A,
                                        Bm.view(Bsz, G, N), Cm.view(Bsz, G, N), self.D)[:, None]
        else:
            y, final = mamba2_ref.ssd_chunked_ref(
                x.view(Bsz, T, H, P).to(ct), dt, A, Bm.view(Bsz, T, G, N).to(ct), Cm.view(Bsz, T, G, N).to(ct),
                self.D.to(ct), self.cfg.chunk_size,
                state.ssm.clone() if torch.is_grad_enabled() else state.ssm)  # autograd keeps the initial state
            state.ssm.copy_(final.detach() if torch.is_grad_enabled() else final)
            y = y.to(x.dtype)
        y = mamba2_ref.gated_rmsnorm_ref(y.reshape(Bsz, T, self.d_inner), z, self.norm.weight, G)
        return self.out_proj(y)
