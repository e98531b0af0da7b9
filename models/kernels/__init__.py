"""Fused Triton kernels for GPU inference, each beside the PyTorch path it replaces (the reference).

`fused_ok(x)` is the one rule deciding per call: CUDA tensors, no autograd (inference), Triton installed,
and not inside `reference_path()` (tests and debugging compare both paths on the same GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - CPU-only installs
    HAVE_TRITON = False

_reference_only = False


def require_triton(instead: str) -> None:
    if not HAVE_TRITON:
        raise RuntimeError(f"Triton is not installed (pip install triton, or use {instead})")


def fused_ok(x: torch.Tensor) -> bool:
    return x.is_cuda and HAVE_TRITON and not _reference_only and not torch.is_grad_enabled()


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Run the PyTorch reference path everywhere inside this block."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous
