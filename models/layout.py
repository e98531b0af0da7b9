"""Weight layouts that make small-batch CPU inference fast without changing parameter names or shapes."""

from __future__ import annotations

import torch
from torch import nn


def store_linear_weights_transposed(module: nn.Module) -> nn.Module:
    """Keep every 2-D weight `[out, in]` as a view of contiguous `[in, out]` storage.

    `F.linear` then hands MKL a non-transposed operand, which is ~2.5x faster for the 1-16 row inputs of
    a streaming step (measured on 2 cores). Shapes, names and state dicts are unchanged.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() == 2 and param.is_contiguous() and name.endswith("weight"):
                param.data = param.data.t().contiguous().t()
    return module


class TransposedWeightCache:
    """A lazily rebuilt `[in*k, out]` copy of a conv weight for the im2col matmul path."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if key != self._key:
            self._value = weight.detach().reshape(weight.shape[0], -1).t().contiguous()
            self._key = key
        return self._value
