"""The ears' semantic codebook: one token per 80 ms frame saying *what* was said, not who said it.

Why: the vocoder codec's codes describe the spectrum, so two voices saying "five" give different codes, and the LM
must learn every kind of voice it will meet from the voices it trained on. Mimi solves this with a first codebook
distilled from a self-supervised speech model. Here a small causal network over the codec's own normalized
80 ms frames is trained (`duplex train ears`) to name, one frame behind, which of `bins` clusters of whisper
tiny.en's encoder states the speech falls in; whisper's states are much the same whoever speaks, so the token is
too, as far as the training voices teach it. The codec appends this token after its acoustic codebooks for the
user's track; the decoder ignores it.

Streaming: every convolution is causal and keeps its last `(kernel - 1) * dilation` input frames per batch slot
(`init_state`), so the offline call (`forward` over a fresh state) and frame-by-frame stepping give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SemanticConfig:
    input_dim: int = 136  # the vocoder codec's normalized frame (4 x 34 parameters)
    dim: int = 256
    kernel: int = 3
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2])
    bins: int = 256
    lag: int = 1  # frames: the token at frame t names the speech of frame t - lag (what training taught it)
    dropout: float = 0.0  # training only (inactive in eval, so streaming == offline holds)

    @property
    def receptive_field(self) -> int:
        """Frames of input each token depends on."""
        return 1 + sum((self.kernel - 1) * d for d in self.dilations)


class SemanticEncoder(nn.Module):
    """Normalized codec frames [B, T, input_dim] -> cluster logits [B, T, bins] (residual causal dilated convs)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.proj_in = nn.Linear(cfg.input_dim, d)
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in cfg.dilations])
        self.convs = nn.ModuleList([nn.Conv1d(d, d, cfg.kernel, dilation=dil) for dil in cfg.dilations])
        self.ffs = nn.ModuleList([nn.Linear(d, d) for _ in cfg.dilations])
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.bins)

    def history_sizes(self) -> list[int]:
        return [(self.cfg.kernel - 1) * dil for dil in self.cfg.dilations]

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> list[torch.Tensor]:
        """Per convolution, its last input frames [B, dim, history] (zeros: the same as an offline start)."""
        return [torch.zeros(batch, self.cfg.dim, n, device=device, dtype=dtype) for n in self.history_sizes()]

    def forward(self, frames: torch.Tensor, state: list[torch.Tensor] | None = None) -> torch.Tensor:
        """frames [B, T, input_dim] -> logits [B, T, bins]; `state` (from `init_state`) is advanced in place,
        None runs over a fresh one."""
        if state is None:
            state = self.init_state(frames.shape[0], frames.device, frames.dtype)
        x = self.proj_in(frames)  # [B, T, d]
        for norm, conv, ff, hist in zip(self.norms, self.convs, self.ffs, state):
            h = norm(x).transpose(1, 2)  # [B, d, T]
            full = torch.cat([hist, h], -1)
            hist.copy_(full[..., full.shape[-1] - hist.shape[-1]:])
            x = x + ff(self.drop(F.gelu(conv(full).transpose(1, 2))))
        return self.head(self.norm_out(x))

    def tokens(self, frames: torch.Tensor, state: list[torch.Tensor] | None = None) -> torch.Tensor:
        """frames [B, T, input_dim] -> tokens [B, T] (the most likely cluster)."""
        return self.forward(frames, state).argmax(-1)
