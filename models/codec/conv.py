"""Causal streaming convolutions with explicit state.

Offline and streaming share one code path: an offline call is a streaming call on a fresh state. This
matches kyutai's Mimi semantics (>= 0.2.5): a conv keeps the last `K_eff - stride` input samples (zeros at
start, or the first sample repeated for `replicate`), and a transposed conv carries its overlap tail
(minus the bias) into the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.state import StreamState


@dataclass
class ConvState(StreamState):
    previous: torch.Tensor  # [B, C_in, K_eff - stride]
    first: torch.Tensor  # [B] bool, only meaningful for replicate padding


@dataclass
class ConvTrState(StreamState):
    partial: torch.Tensor  # [B, C_out, K - stride]


class CausalConv1d(nn.Module):
    """Conv1d whose left context comes from its state; `T` must be a multiple of the stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.stride, self.dilation, self.groups, self.pad_mode = stride, dilation, groups, pad_mode
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.history = (kernel_size - 1) * dilation + 1 - stride

    def init_state(self, batch: int, device: torch.device | None = None) -> ConvState:
        device = device or self.weight.device
        return ConvState(
            previous=torch.zeros(batch, self.weight.shape[1] * self.groups, self.history, device=device,
                                 dtype=self.weight.dtype),
            first=torch.ones(batch, dtype=torch.bool, device=device),
        )

    def forward(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        T = x.shape[-1]
        if T == 0 or T % self.stride:
            raise ValueError(f"conv input length {T} must be a positive multiple of the stride {self.stride}")
        if self.history:
            previous = state.previous
            if self.pad_mode == "replicate":
                previous = torch.where(state.first.view(-1, 1, 1), x[..., :1], previous)
                state.first.zero_()
            x = torch.cat([previous, x], dim=-1)
            state.previous.copy_(x[..., -self.history:])
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d that emits `T * stride` samples per call and carries the overlap in its state."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.overlap = kernel_size - stride

    def init_state(self, batch: int, device: torch.device | None = None) -> ConvTrState:
        device = device or self.weight.device
        out_channels = self.weight.shape[1] * self.groups
        return ConvTrState(partial=torch.zeros(batch, out_channels, self.overlap, device=device,
                                               dtype=self.weight.dtype))

    def forward(self, x: torch.Tensor, state: ConvTrState) -> torch.Tensor:
        y = F.conv_transpose1d(x, self.weight, self.bias, self.stride, groups=self.groups)
        P = self.overlap
        if P == 0:
            return y
        head = y[..., :P] + state.partial
        tail = y[..., -P:]
        if self.bias is not None:
            tail = tail - self.bias[:, None]
        state.partial.copy_(tail)
        return torch.cat([head, y[..., P:-P]], dim=-1)
