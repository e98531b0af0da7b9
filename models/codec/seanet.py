"""SEANet encoder/decoder (the convolutional half of Mimi), causal and streaming.

Module indices inside `model` follow kyutai's layout so checkpoint keys map one-to-one
(`encoder.model.3.conv.conv.weight` -> `encoder.model.3.weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.codec.conv import CausalConv1d, CausalConvTranspose1d
from models.state import StreamState


@dataclass
class SEANetConfig:
    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    n_residual_layers: int = 1
    compress: int = 2

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.ratios:
            hop *= r
        return hop


@dataclass
class StackState(StreamState):
    layers: list  # one state (or None) per entry of `model`


class ResidualUnit(nn.Module):
    """x + conv1x1(elu(conv_k(elu(x)))) — indices 1 and 3 match the published `block.{1,3}` keys."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int):
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            nn.ELU(),
            CausalConv1d(dim, hidden, kernel_size, dilation=dilation),
            nn.ELU(),
            CausalConv1d(hidden, dim, 1),
        ])

    def init_state(self, batch: int, device=None) -> StackState:
        return StackState([self.block[1].init_state(batch, device), self.block[3].init_state(batch, device)])

    def forward(self, x: torch.Tensor, state: StackState) -> torch.Tensor:
        y = self.block[1](self.block[0](x), state.layers[0])
        y = self.block[3](self.block[2](y), state.layers[1])
        return x + y


def _init_stack(model: nn.ModuleList, batch: int, device) -> StackState:
    return StackState([m.init_state(batch, device) if hasattr(m, "init_state") else None for m in model])


def _run_stack(model: nn.ModuleList, x: torch.Tensor, state: StackState) -> torch.Tensor:
    for module, sub in zip(model, state.layers):
        x = module(x) if sub is None else module(x, sub)
    return x


class SEANetEncoder(nn.Module):
    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        self.cfg = cfg
        mult = 1
        layers: list[nn.Module] = [CausalConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            dim = mult * cfg.n_filters
            for j in range(cfg.n_residual_layers):
                layers.append(ResidualUnit(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress))
            layers += [nn.ELU(), CausalConv1d(dim, dim * 2, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [nn.ELU(), CausalConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def init_state(self, batch: int, device=None) -> StackState:
        return _init_stack(self.model, batch, device)

    def forward(self, x: torch.Tensor, state: StackState) -> torch.Tensor:
        return _run_stack(self.model, x, state)


class SEANetDecoder(nn.Module):
    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        self.cfg = cfg
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [CausalConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size)]
        for ratio in cfg.ratios:
            dim = mult * cfg.n_filters
            layers += [nn.ELU(), CausalConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)]
            for j in range(cfg.n_residual_layers):
                layers.append(ResidualUnit(dim // 2, cfg.residual_kernel_size, cfg.dilation_base**j,
                                           cfg.compress))
            mult //= 2
        layers += [nn.ELU(), CausalConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def init_state(self, batch: int, device=None) -> StackState:
        return _init_stack(self.model, batch, device)

    def forward(self, x: torch.Tensor, state: StackState) -> torch.Tensor:
        return _run_stack(self.model, x, state)
