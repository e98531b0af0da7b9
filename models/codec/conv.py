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

from models.layout import TransposedWeightCache
from models.state import StreamState

# On CPU, short streaming chunks are bound by reading the weights; one GEMM (MKL) beats oneDNN's conv paths
# there, by up to 8x for Mimi's 1024-channel transposed conv. Longer (offline) inputs keep the conv kernels.
MATMUL_MAX_STEPS = 32


def _conv1d_matmul(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, kernel: int,
                   stride: int, dilation: int) -> torch.Tensor:
    """conv1d (no padding, groups=1) as im2col + one matrix product; weight_t is `[C_in * K, C_out]`."""
    c_in = weight_t.shape[0] // kernel
    if kernel == 1:
        patches = x[..., ::stride].transpose(1, 2)
    else:
        patches = x.unfold(-1, (kernel - 1) * dilation + 1, stride)  # [B, C_in, T_out, K_eff]
        if dilation > 1:
            patches = patches[..., ::dilation]
        patches = patches.permute(0, 2, 1, 3).reshape(x.shape[0], -1, c_in * kernel)
    y = torch.matmul(patches, weight_t).transpose(1, 2)
    return y if bias is None else y + bias[:, None]


def _conv_transpose1d_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: int) -> torch.Tensor:
    """conv_transpose1d (groups=1) as one matrix product followed by an overlap-add of K/stride blocks."""
    c_in, c_out, k = weight.shape
    B, _, T = x.shape
    blocks = -(-k // stride)
    w = weight if k == blocks * stride else F.pad(weight, (0, blocks * stride - k))
    z = torch.matmul(x.transpose(1, 2), w.reshape(c_in, -1)).view(B, T, c_out, blocks, stride)
    y = x.new_zeros(B, c_out, (T + blocks - 1) * stride)
    for j in range(blocks):
        y[:, :, j * stride:(j + T) * stride] += z[:, :, :, j].permute(0, 2, 1, 3).reshape(B, c_out, T * stride)
    y = y[..., : (T - 1) * stride + k]
    return y if bias is None else y + bias[:, None]


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
        self._matmul_weight = TransposedWeightCache()

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
                # clone: the flag is reset in place below, and autograd keeps the condition for backward
                previous = torch.where(state.first.view(-1, 1, 1).clone(), x[..., :1], previous)
                state.first.zero_()
            x = torch.cat([previous, x], dim=-1)
            state.previous.copy_(x[..., -self.history:])
        out_len = (x.shape[-1] - self.history - self.stride) // self.stride + 1
        # (not when exporting: the cached copy is keyed by a data pointer, which a traced tensor lacks)
        if x.device.type == "cpu" and self.groups == 1 and out_len <= MATMUL_MAX_STEPS and not (
                torch.is_grad_enabled() and self.weight.requires_grad) and not torch.compiler.is_compiling():
            return _conv1d_matmul(x, self._matmul_weight.get(self.weight), self.bias, self.weight.shape[-1],
                                  self.stride, self.dilation)
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
        if x.device.type == "cpu" and self.groups == 1 and x.shape[-1] <= MATMUL_MAX_STEPS:
            y = _conv_transpose1d_matmul(x, self.weight, self.bias, self.stride)
        else:
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
